//! `[plugins.<name>.config]` of the PocketSphinx provider.

use std::collections::BTreeMap;

use serde::Deserialize;

/// PocketSphinx decoder parameters `decoder` may set: search beams and weights, the passes,
/// noise handling. Paths, the sample rate and the feature parameters (which must match the
/// model) are not among them.
pub const DECODER_PARAMETERS: &[&str] = &[
    "beam",
    "wbeam",
    "pbeam",
    "lpbeam",
    "lponlybeam",
    "fwdflatbeam",
    "fwdflatwbeam",
    "pl_window",
    "pl_beam",
    "pl_pbeam",
    "pl_pip",
    "pl_weight",
    "compallsen",
    "fwdtree",
    "fwdflat",
    "bestpath",
    "latsize",
    "maxwpf",
    "maxhmmpf",
    "min_endfr",
    "fwdflatefwid",
    "fwdflatsfwin",
    "fsgusealtpron",
    "fsgusefiller",
    "lw",
    "fwdflatlw",
    "bestpathlw",
    "ascale",
    "wip",
    "nwpen",
    "pip",
    "uw",
    "silprob",
    "fillprob",
    "topn",
    "topn_beam",
    "ds",
    "remove_dc",
    "remove_noise",
    "dither",
    "seed",
];

/// Cepstral means of the en-us model on typical speech (PocketSphinx's own streaming test):
/// the starting point of live cepstral mean normalisation at each stream.
pub const EN_US_CMNINIT: &str = "41.00,-5.29,-0.12,5.09,2.48,-4.07,-1.37,-1.78,-5.08,-2.05,-6.45,-1.42,1.17";

/// The provider's configuration. Every key is optional.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the model files are, an absolute path: `/data`, the read-only directory the host
    /// grants as `[plugins.<name>.capabilities] data_dir`. Native tests point it at a real
    /// directory.
    pub data_dir: String,
    /// The acoustic model directory, relative to `data_dir` (`en-us`: 16 kHz US English).
    pub hmm: String,
    /// The n-gram language model, relative to `data_dir` (`en-us.lm.bin`), used when a stream
    /// asks for no grammar. `""`: none, for grammar-only deployments (IVR menus): the instance
    /// then needs far less memory, and a stream without keyterms or a grammar is refused.
    pub lm: String,
    /// The pronunciation dictionary, relative to `data_dir` (`cmudict-en-us.dict`). Grammar and
    /// keyterm words must be in it.
    pub dict: String,
    /// Voice activity detector aggressiveness, 0 (loose: more audio counts as speech) to 3
    /// (strict). Default 0, PocketSphinx's own.
    pub vad_mode: u8,
    /// The endpointer's sliding window, ms (90..=3000; default 300). Speech starts when more
    /// than `endpoint_ratio` of the window is voiced and ends when less than
    /// `1 - endpoint_ratio` is, so the window is also roughly the silence that ends an
    /// utterance. A stream's `endpointing_ms` option overrides it.
    pub endpoint_window_ms: u32,
    /// The endpointer's voiced ratio (0.5 to 0.95; default 0.9).
    pub endpoint_ratio: f64,
    /// Initial cepstral means, comma-separated (1 to 13 numbers; default the en-us model's
    /// typical values). Live normalisation starts from them at each stream and adapts as audio
    /// comes: a good start makes a stream's first utterance as accurate as the later ones, and
    /// no stream starts from the means another stream left.
    pub cmninit: String,
    /// An utterance is cut after this much speech, ms (1000..=120000; default 30000): a final
    /// without `speech_final`, and the speech goes on in the next final. It bounds the decoder's
    /// memory and work per utterance whatever the audio (endless noise).
    pub max_utterance_ms: u32,
    /// A faint noise floor added to the audio, its amplitude in sample units (0..=1000; 0 =
    /// none; default 64, about -60 dBFS). The en-us model is wideband: its features span 40 mel
    /// bands up to 6800 Hz, and telephone audio upsampled from 8000 Hz has no energy at all
    /// above 4000 Hz, whose log energies then sit at the floor and wreck recognition (a grammar
    /// of 20 sentences matched none of a phone line's synthetic speech without it, all with it).
    /// Deterministic (the same pseudo-random sequence per stream), so results repeat.
    pub noise_floor: u16,
    /// Further PocketSphinx parameters by name ([`DECODER_PARAMETERS`]); PocketSphinx's
    /// defaults otherwise, except `fwdflat`, off here: the second search pass runs when an
    /// utterance ends and grows with it (about 3.3 G fuel at the end of 10 s of speech, 7.8 G
    /// after 24 s), delaying the final; `{ fwdflat = true }` turns it back on. `beam = 1e-40,
    /// wbeam = 1e-24` take about a fifth less CPU again. `bestpath = false` makes every
    /// confidence 1.0.
    pub decoder: BTreeMap<String, serde_json::Value>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: "/data".into(),
            hmm: "en-us".into(),
            lm: "en-us.lm.bin".into(),
            dict: "cmudict-en-us.dict".into(),
            vad_mode: 0,
            endpoint_window_ms: 300,
            endpoint_ratio: 0.9,
            cmninit: EN_US_CMNINIT.into(),
            max_utterance_ms: 30_000,
            noise_floor: 64,
            decoder: BTreeMap::new(),
        }
    }
}

impl Config {
    /// Check what serde cannot: ranges, relative model paths, decoder parameter names.
    pub fn validate(&self) -> Result<(), String> {
        if !self.data_dir.starts_with('/') {
            return Err(format!("data_dir `{}` is not an absolute path", self.data_dir));
        }
        let lm = (!self.lm.is_empty()).then_some(("lm", &self.lm));
        for (key, path) in [("hmm", &self.hmm), ("dict", &self.dict)].into_iter().chain(lm) {
            if path.is_empty() || path.starts_with('/') || path.split('/').any(|c| c == "..") || path.contains('\0') {
                return Err(format!("{key} `{path}` is not a path inside data_dir"));
            }
            // PocketSphinx would hand these to gunzip/bunzip2 through popen, which it is built
            // without (it would exit).
            let lower = path.to_ascii_lowercase();
            if [".gz", ".bz2", ".z"].iter().any(|ext| lower.ends_with(ext)) {
                return Err(format!("{key} `{path}`: compressed model files are not supported, unpack it"));
            }
        }
        if self.vad_mode > 3 {
            return Err(format!("vad_mode {} is outside 0..=3", self.vad_mode));
        }
        check_window(self.endpoint_window_ms).map_err(|e| format!("endpoint_window_ms {e}"))?;
        if !(0.5..=0.95).contains(&self.endpoint_ratio) {
            return Err(format!("endpoint_ratio {} is outside 0.5..=0.95", self.endpoint_ratio));
        }
        let means: Vec<&str> = self.cmninit.split(',').collect();
        if means.len() > 13 || means.iter().any(|m| m.trim().parse::<f64>().map_or(true, |v| !v.is_finite())) {
            return Err(format!("cmninit `{}` is not 1 to 13 comma-separated numbers", self.cmninit));
        }
        if !(1000..=120_000).contains(&self.max_utterance_ms) {
            return Err(format!("max_utterance_ms {} is outside 1000..=120000", self.max_utterance_ms));
        }
        if self.noise_floor > 1000 {
            return Err(format!("noise_floor {} is outside 0..=1000", self.noise_floor));
        }
        for (name, value) in &self.decoder {
            if !DECODER_PARAMETERS.contains(&name.as_str()) {
                return Err(format!("decoder parameter `{name}` is not one of {}", DECODER_PARAMETERS.join(", ")));
            }
            decoder_value(value).ok_or_else(|| format!("decoder parameter `{name}`: {value} is not a scalar"))?;
        }
        Ok(())
    }

    /// The model paths: acoustic model directory, LM (`""` when none), dictionary.
    pub fn model_paths(&self) -> [String; 3] {
        let dir = self.data_dir.trim_end_matches('/');
        let lm = if self.lm.is_empty() { String::new() } else { format!("{dir}/{}", self.lm) };
        [format!("{dir}/{}", self.hmm), lm, format!("{dir}/{}", self.dict)]
    }
}

/// A decoder parameter's value as PocketSphinx parses it (booleans as `yes`/`no`).
pub(crate) fn decoder_value(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(if *b { "yes" } else { "no" }.into()),
        _ => None,
    }
}

/// An endpointer window in ms: 90..=3000 (three to a hundred 30 ms VAD frames).
pub(crate) fn check_window(ms: u32) -> Result<(), String> {
    if (90..=3000).contains(&ms) { Ok(()) } else { Err(format!("{ms} is outside 90..=3000")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Config, String> {
        let c: Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
        c.validate().map(|()| c)
    }

    #[test]
    fn defaults_are_valid_and_bounds_are_checked() {
        let c = parse("{}").unwrap();
        assert_eq!(
            c.model_paths(),
            ["/data/en-us".to_string(), "/data/en-us.lm.bin".into(), "/data/cmudict-en-us.dict".into()]
        );
        assert!(parse(r#"{"data_dir": "models"}"#).unwrap_err().contains("data_dir"));
        assert!(parse(r#"{"lm": "../etc/passwd"}"#).unwrap_err().contains("lm"));
        assert_eq!(parse(r#"{"lm": ""}"#).unwrap().model_paths()[1], "");
        assert!(parse(r#"{"dict": "/x.dict"}"#).unwrap_err().contains("dict"));
        assert!(parse(r#"{"lm": "en-us.lm.gz"}"#).unwrap_err().contains("compressed"));
        assert!(parse(r#"{"vad_mode": 4}"#).unwrap_err().contains("vad_mode"));
        assert!(parse(r#"{"endpoint_window_ms": 30}"#).unwrap_err().contains("endpoint_window_ms"));
        assert!(parse(r#"{"endpoint_ratio": 1.0}"#).unwrap_err().contains("endpoint_ratio"));
        assert!(parse(r#"{"cmninit": "40,3,x"}"#).unwrap_err().contains("cmninit"));
        assert!(parse(r#"{"cmninit": "40,3,-1"}"#).is_ok());
        assert!(parse(r#"{"max_utterance_ms": 500}"#).unwrap_err().contains("max_utterance_ms"));
        assert!(parse(r#"{"decoder": {"hmm": "/etc"}}"#).unwrap_err().contains("`hmm`"));
        assert!(parse(r#"{"decoder": {"beam": [1]}}"#).unwrap_err().contains("scalar"));
        assert!(parse(r#"{"decoder": {"beam": 1e-40, "fwdflat": false}}"#).is_ok());
        assert!(parse(r#"{"modle": "x"}"#).unwrap_err().contains("unknown field"));
    }
}
