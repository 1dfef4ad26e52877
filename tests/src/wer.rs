//! Word error rate: how far a recogniser's hypothesis is from the reference text, as speech
//! recognition is scored (NIST sclite): the word-level edit distance (substitutions, deletions,
//! insertions) over the reference's word count. Words are compared case-insensitively with
//! punctuation removed (an apostrophe inside a word is kept: "don't").

/// `text` as words: lower-case, punctuation removed.
pub fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric() || *c == '\'')
                .flat_map(char::to_lowercase)
                .collect::<String>()
                .trim_matches('\'')
                .to_string()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// Word errors of `hypothesis` against `reference`: the least number of substituted, deleted
/// and inserted words that turns one into the other.
pub fn errors(reference: &str, hypothesis: &str) -> usize {
    let (r, h) = (words(reference), words(hypothesis));
    let mut previous: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut current = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            let substitute = previous[j] + usize::from(rw != hw);
            current[j + 1] = substitute.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[h.len()]
}

/// Word error rate: [`errors`] over the reference's word count (0.0 is perfect; it can exceed
/// 1.0 with insertions). An empty reference scores 0.0 against an empty hypothesis, else 1.0.
pub fn rate(reference: &str, hypothesis: &str) -> f64 {
    let n = words(reference).len();
    if n == 0 {
        return if words(hypothesis).is_empty() { 0.0 } else { 1.0 };
    }
    errors(reference, hypothesis) as f64 / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_substitutions_deletions_and_insertions() {
        assert_eq!(errors("go forward ten meters", "go forward ten meters"), 0);
        assert_eq!(errors("Go forward, ten meters.", "go forward ten meters"), 0);
        assert_eq!(errors("go forward ten meters", "go forward two meters"), 1);
        assert_eq!(errors("go forward ten meters", "go ten meters"), 1);
        assert_eq!(errors("go forward ten meters", "so go forward ten meters now"), 2);
        assert_eq!(errors("a b c", ""), 3);
        assert!((rate("a b c d", "a x c d") - 0.25).abs() < 1e-9);
        assert_eq!(words("I don't know."), ["i", "don't", "know"]);
    }
}
