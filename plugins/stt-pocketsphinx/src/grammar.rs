//! What a stream recognises: the n-gram LM, a caller's JSGF grammar, or a grammar of keyterm
//! alternatives; and turning decoder output (dictionary words) into transcript text.

use gatewayd_plugin::speech::{ErrorKind, SpeechError};

/// At most this many bytes of JSGF per stream (an IVR menu needs a few hundred).
pub const MAX_GRAMMAR_BYTES: usize = 16 * 1024;
/// At most this nesting of `(` and `[` in a grammar (the parser and the FSG builder recurse).
pub const MAX_GRAMMAR_NESTING: usize = 32;
/// At most this many keyterms per stream.
pub const MAX_KEYTERMS: usize = 100;
/// At most this many bytes per keyterm.
pub const MAX_KEYTERM_BYTES: usize = 128;

/// The search a stream decodes with.
#[derive(Debug, Clone, PartialEq)]
pub enum Search {
    /// The configured n-gram language model (open vocabulary).
    Lm,
    /// A JSGF grammar (the caller's, or built from keyterms): only its sentences.
    Grammar(String),
}

fn bad_request(message: String) -> SpeechError {
    SpeechError::new(ErrorKind::BadRequest, message)
}

/// Check a caller's JSGF text before the parser sees it: size, NUL bytes, nesting, and no
/// `import` (it would read grammar files from the filesystem).
pub fn check_grammar(text: &str) -> Result<(), SpeechError> {
    if text.len() > MAX_GRAMMAR_BYTES {
        return Err(bad_request(format!("grammar of {} bytes is over {MAX_GRAMMAR_BYTES}", text.len())));
    }
    if text.trim().is_empty() {
        return Err(bad_request("grammar is empty".into()));
    }
    if text.contains('\0') {
        return Err(bad_request("grammar contains a NUL byte".into()));
    }
    if text.split([';', '\n']).any(|stmt| stmt.trim_start().starts_with("import")) {
        return Err(bad_request("grammar imports are not supported".into()));
    }
    let (mut depth, mut max) = (0usize, 0usize);
    for c in text.chars() {
        match c {
            '(' | '[' => {
                depth += 1;
                max = max.max(depth);
            }
            ')' | ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if max > MAX_GRAMMAR_NESTING {
        return Err(bad_request(format!("grammar nests groups {max} deep, over {MAX_GRAMMAR_NESTING}")));
    }
    Ok(())
}

/// The dictionary words of a keyterm: lower-cased, split on whitespace, surrounding
/// punctuation (`,!?;:"()`) dropped. Errors (`bad_request`): over the size bound, no word, or
/// a word with characters other than ASCII letters, digits and `'-._`.
pub fn keyterm_words(keyterm: &str) -> Result<Vec<String>, SpeechError> {
    if keyterm.len() > MAX_KEYTERM_BYTES {
        return Err(bad_request(format!("keyterm of {} bytes is over {MAX_KEYTERM_BYTES}", keyterm.len())));
    }
    let mut words = Vec::new();
    for raw in keyterm.split_whitespace() {
        let word = raw.trim_matches(|c: char| ",!?;:\"()".contains(c)).to_ascii_lowercase();
        if word.is_empty() {
            continue;
        }
        if !word.chars().all(|c| c.is_ascii_alphanumeric() || "'-._".contains(c)) {
            return Err(bad_request(format!("keyterm `{keyterm}`: `{word}` is not a dictionary word")));
        }
        words.push(word);
    }
    if words.is_empty() {
        return Err(bad_request(format!("keyterm `{keyterm}` has no word")));
    }
    Ok(words)
}

/// A JSGF grammar whose sentences are the keyterms (one alternative each). Every word must be
/// one `has_word` knows; the first that is not is the error (`bad_request`, naming it).
pub fn keyterms_grammar(keyterms: &[String], mut has_word: impl FnMut(&str) -> bool) -> Result<String, SpeechError> {
    if keyterms.len() > MAX_KEYTERMS {
        return Err(bad_request(format!("{} keyterms, over {MAX_KEYTERMS}", keyterms.len())));
    }
    let mut alternatives: Vec<String> = Vec::new();
    for keyterm in keyterms {
        let words = keyterm_words(keyterm)?;
        if let Some(missing) = words.iter().find(|w| !has_word(w)) {
            return Err(bad_request(format!("keyterm `{keyterm}`: `{missing}` is not in the dictionary")));
        }
        let phrase = words.join(" ");
        if !alternatives.contains(&phrase) {
            alternatives.push(phrase);
        }
    }
    Ok(format!("#JSGF V1.0;\ngrammar keyterms;\npublic <keyterm> = {};\n", alternatives.join(" | ")))
}

/// Whether a decoder word is a filler rather than speech: `<s>`, `</s>`, `<sil>`, `[NOISE]`,
/// `[SPEECH]`, `++NOISE++`.
pub fn is_filler(word: &str) -> bool {
    word.is_empty() || word.starts_with('<') || word.starts_with('[') || word.starts_with('+')
}

/// A dictionary word without its alternate-pronunciation suffix: `the(2)` -> `the`.
pub fn base_word(word: &str) -> &str {
    match word.strip_suffix(')').and_then(|w| w.rfind('(').map(|i| (w, i))) {
        Some((w, i)) if i > 0 && w[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &word[..i],
        _ => word,
    }
}

/// Transcript text from a decoder hypothesis: fillers dropped, pronunciation suffixes removed.
pub fn clean_text(hyp: &str) -> String {
    hyp.split_whitespace().filter(|w| !is_filler(w)).map(base_word).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fillers_and_pronunciation_suffixes_leave_the_text() {
        assert_eq!(clean_text("<s> go forward(2) <sil> ten [NOISE] meters </s>"), "go forward ten meters");
        assert_eq!(clean_text(""), "");
        assert_eq!(base_word("read(12)"), "read");
        assert_eq!(base_word("(2)"), "(2)");
        assert_eq!(base_word("a(b)"), "a(b)");
        assert!(is_filler("++NOISE++") && is_filler("</s>") && !is_filler("sales"));
    }

    #[test]
    fn keyterms_become_alternatives_of_dictionary_words() {
        let dict = ["sales", "support", "billing", "two", "words"];
        let grammar =
            keyterms_grammar(&["Sales".into(), " support! ".into(), "two  words".into(), "sales".into()], |w| {
                dict.contains(&w)
            })
            .unwrap();
        assert_eq!(grammar, "#JSGF V1.0;\ngrammar keyterms;\npublic <keyterm> = sales | support | two words;\n");
        let missing = keyterms_grammar(&["sales".into(), "gatewayd rocks".into()], |w| dict.contains(&w)).unwrap_err();
        assert_eq!(missing.kind, ErrorKind::BadRequest);
        assert!(missing.message.contains("`gatewayd`"), "{}", missing.message);
        assert!(keyterm_words("a <rule>").is_err());
        assert!(keyterm_words("!!").is_err());
        assert!(keyterm_words(&"a".repeat(MAX_KEYTERM_BYTES + 1)).is_err());
        assert!(keyterms_grammar(&vec!["sales".into(); MAX_KEYTERMS + 1], |_| true).is_err());
    }

    #[test]
    fn grammars_are_bounded_before_parsing() {
        assert!(check_grammar("#JSGF V1.0; grammar g; public <a> = yes | no;").is_ok());
        assert!(check_grammar(&"x".repeat(MAX_GRAMMAR_BYTES + 1)).is_err());
        assert!(check_grammar("  ").is_err());
        assert!(check_grammar("#JSGF V1.0;\ngrammar g;\nimport <other.*>;\npublic <a> = yes;").is_err());
        assert!(check_grammar("a\0b").is_err());
        let deep = format!("#JSGF V1.0; grammar g; public <a> = {}yes{};", "(".repeat(40), ")".repeat(40));
        assert!(check_grammar(&deep).unwrap_err().message.contains("deep"));
    }
}
