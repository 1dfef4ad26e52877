//! Splitting a text into the pieces synthesised one at a time: sentences, and phrases of long
//! sentences, so the first audio is ready after one piece rather than the whole text.

/// The longest piece, in [`weight`] units (about letters of plain text): a longer sentence
/// is cut at a phrase break (`,` `;` `:`), else at a space. 100 is 6 to 9 s of speech, which
/// Flite synthesises in about 0.25 s of Wasm (2.5e9 fuel, 12 MB of linear memory) on this
/// class of machine: the latency of a long sentence's first audio and the bound on one
/// `pull-audio` call's work.
pub const MAX_PIECE_WEIGHT: usize = 100;

/// The shortest piece a long sentence is cut into at a phrase break, in bytes (shorter cuts
/// would break the prosody for no gain in latency).
const MIN_PHRASE_BYTES: usize = 30;

/// A token longer than this, in characters, is likely spelled out letter by letter.
const LONG_TOKEN_CHARS: usize = 20;

/// Words that end with a period without ending the sentence (`Dr. Smith`); a period before a
/// lower-case word never ends one (`e.g. this`).
const ABBREVIATIONS: &[&str] = &["mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "mt", "vs"];

/// `text` as the pieces to speak, in order: split after `.` `!` `?` (with closing quotes or
/// brackets) followed by a space, and at blank lines; long sentences cut to
/// [`MAX_PIECE_WEIGHT`]. Control characters become spaces; pieces with no letter or digit (bare
/// punctuation) are dropped, so an empty result means there is nothing to say.
pub fn split(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    for paragraph in paragraphs(text) {
        let clean: String = paragraph.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        for sentence in sentences(&clean) {
            cut_long(sentence, &mut pieces);
        }
    }
    pieces.retain(|p| p.chars().any(char::is_alphanumeric));
    pieces
}

/// `text` split at blank lines (a line holding only whitespace).
fn paragraphs(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut line_start = 0;
    for (i, c) in text.char_indices() {
        if c == '\n' {
            let line = &text[line_start..i];
            if line.trim().is_empty() && line_start > start {
                out.push(&text[start..line_start]);
                start = i + 1;
            }
            line_start = i + 1;
        }
    }
    out.push(&text[start..]);
    out
}

fn is_terminator(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '…')
}

fn is_closing(c: char) -> bool {
    matches!(c, '"' | '\'' | ')' | ']' | '}' | '\u{201d}' | '\u{2019}' | '»')
}

/// `text` split into sentences (each trimmed, none empty).
fn sentences(text: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        if !is_terminator(c) {
            i += 1;
            continue;
        }
        // The run of terminators and closing marks (`?!`, `..."`).
        let mut j = i + 1;
        while j < chars.len() && (is_terminator(chars[j].1) || is_closing(chars[j].1)) {
            j += 1;
        }
        let end = chars.get(j).map_or(text.len(), |&(b, _)| b);
        let at_space = j == chars.len() || chars[j].1.is_whitespace();
        let next = next_word(&chars[j..]);
        // `wait... then`, `e.g. this`, `Dr. Smith`: the sentence goes on.
        let goes_on = next.is_some_and(char::is_lowercase)
            || (c == '.' && j == i + 1 && next.is_some() && is_abbreviation(&text[start..at]));
        if at_space && !goes_on {
            push_trimmed(&text[start..end], &mut out);
            start = end;
        }
        i = j;
    }
    push_trimmed(&text[start..], &mut out);
    out
}

/// The first character of the next word, if any.
fn next_word(rest: &[(usize, char)]) -> Option<char> {
    rest.iter().map(|&(_, c)| c).find(|c| !c.is_whitespace())
}

/// Whether a period after `before` (the sentence so far) is an abbreviation's or an initial's:
/// `Dr. Smith`, `J. Smith`.
fn is_abbreviation(before: &str) -> bool {
    let word = before.rsplit(|c: char| c.is_whitespace() || c == '(').next().unwrap_or("");
    let mut letters = word.chars();
    let initial = matches!((letters.next(), letters.next()), (Some(c), None) if c.is_alphabetic());
    initial || ABBREVIATIONS.iter().any(|a| word.eq_ignore_ascii_case(a))
}

fn push_trimmed<'a>(s: &'a str, out: &mut Vec<&'a str>) {
    let s = s.trim();
    if !s.is_empty() {
        out.push(s);
    }
}

/// About how long `c` takes to say, in letters of plain text: digits expand to words
/// (`1234567` is 68 letters spoken), symbols too (`%`: percent), capitals may be an acronym
/// spelled out, as are the letters of a token over [`LONG_TOKEN_CHARS`].
pub fn weight(c: char, in_long_token: bool) -> usize {
    match c {
        '0'..='9' => 8,
        c if c.is_uppercase() => 3,
        c if c.is_alphabetic() && in_long_token => 4,
        '#' | '$' | '%' | '&' | '*' | '+' | '/' | '<' | '=' | '>' | '@' | '\\' | '^' | '_' | '|' | '~' => 6,
        _ => 1,
    }
}

/// The weight of each character of `s`, by byte offset.
fn weights(s: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::with_capacity(s.len());
    let mut token_start = 0;
    for (i, c) in s.char_indices().chain(std::iter::once((s.len(), ' '))) {
        if c.is_whitespace() {
            let token = &s[token_start..i];
            let long = token.chars().count() > LONG_TOKEN_CHARS;
            out.extend(token.char_indices().map(|(j, t)| (token_start + j, weight(t, long))));
            if i < s.len() {
                out.push((i, 1));
            }
            token_start = i + c.len_utf8();
        }
    }
    out
}

/// The weight of `s` (see [`weight`]).
pub fn piece_weight(s: &str) -> usize {
    weights(s).iter().map(|&(_, w)| w).sum()
}

/// `sentence` cut into pieces of at most [`MAX_PIECE_WEIGHT`], appended to `out`.
fn cut_long(mut sentence: &str, out: &mut Vec<String>) {
    loop {
        sentence = sentence.trim();
        // The byte offset of the first character over the bound, if any.
        let mut total = 0;
        let Some(limit) = weights(sentence).into_iter().find_map(|(i, w)| {
            total += w;
            (total > MAX_PIECE_WEIGHT).then_some(i)
        }) else {
            break;
        };
        let window = &sentence[..limit];
        let phrase = window
            .char_indices()
            .rev()
            .filter(|&(i, c)| matches!(c, ',' | ';' | ':') && i >= MIN_PHRASE_BYTES)
            .find(|&(i, _)| sentence[i + 1..].starts_with(char::is_whitespace))
            .map(|(i, _)| i + 1);
        let space = window.rfind(char::is_whitespace).filter(|&i| i > 0);
        // A character weighs at most 8, so `limit` is past the first one: each cut progresses.
        let cut = phrase.or(space).unwrap_or(limit);
        out.push(sentence[..cut].trim().to_string());
        sentence = &sentence[cut..];
    }
    if !sentence.is_empty() {
        out.push(sentence.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_after_terminators_and_keep_abbreviations() {
        assert_eq!(
            split("Hello there. How are you? Fine!  Dr. Smith met J. Doe, e.g. at noon.\"Quoted.\" End"),
            ["Hello there.", "How are you?", "Fine!", "Dr. Smith met J. Doe, e.g. at noon.\"Quoted.\"", "End"]
        );
        assert_eq!(
            split("It costs $3.50. Call now... or not?! (Yes.) Done."),
            ["It costs $3.50.", "Call now... or not?!", "(Yes.)", "Done."]
        );
        assert_eq!(split("One.\nstill one.\n\n  \nTwo"), ["One.\nstill one.", "Two"].map(|s| s.replace('\n', " ")));
    }

    #[test]
    fn long_sentences_are_cut_at_phrases_then_spaces() {
        let clause = "this clause runs on for a while without stopping";
        let text = [clause; 8].join(", ");
        let pieces = split(&text);
        assert!(pieces.len() > 1, "{pieces:?}");
        assert!(pieces.iter().all(|p| piece_weight(p) <= MAX_PIECE_WEIGHT), "{pieces:?}");
        assert!(pieces[..pieces.len() - 1].iter().all(|p| p.ends_with(',')), "cut after a comma: {pieces:?}");
        assert_eq!(pieces.join(" "), text);
        let words = "word ".repeat(100);
        let pieces = split(&words);
        assert!(pieces.iter().all(|p| piece_weight(p) <= MAX_PIECE_WEIGHT && !p.is_empty()));
        assert_eq!(pieces.join(" "), words.trim());
        // No space at all: a hard cut at a character boundary.
        let pieces = split(&"é".repeat(300));
        assert!(pieces.iter().all(|p| piece_weight(p) <= MAX_PIECE_WEIGHT), "{pieces:?}");
        assert_eq!(pieces.concat(), "é".repeat(300));
    }

    #[test]
    fn numbers_symbols_and_spelled_tokens_make_shorter_pieces() {
        assert_eq!(piece_weight("call me"), 7);
        assert_eq!(piece_weight("Call 911, 50%"), 3 + 3 + 1 + 24 + 2 + 16 + 6);
        assert_eq!(piece_weight(&"x".repeat(LONG_TOKEN_CHARS + 1)), 4 * (LONG_TOKEN_CHARS + 1));
        // Seven-digit numbers are about 12 spoken words each: a few per piece, not fifteen.
        let numbers: Vec<String> = (0..40).map(|i| (1_234_567 + i * 7919).to_string()).collect();
        let pieces = split(&numbers.join(" "));
        assert!(pieces.iter().all(|p| p.split(' ').count() <= 2), "{pieces:?}");
        assert_eq!(pieces.join(" "), numbers.join(" "));
        let junk = "qwrtzpsdfghjklxcvbnm".repeat(20);
        assert!(split(&junk).iter().all(|p| p.len() <= MAX_PIECE_WEIGHT / 4), "spelled letter by letter");
    }

    #[test]
    fn punctuation_and_control_characters_say_nothing() {
        assert!(split("").is_empty());
        assert!(split(" ... !? \n\n -- ").is_empty());
        assert_eq!(split("a\0b\tc\u{7}"), ["a b c"]);
    }
}
