//! Text arriving in requests: whether a prompt says anything at all. A prompt made only of white
//! space, control characters (Unicode Cc, e.g. BEL or NUL) or format characters (Cf, e.g. a
//! zero-width space or a bidirectional override) renders as nothing and tokenises to noise, so it
//! counts as empty.

use unicode_general_category::{GeneralCategory, get_general_category};

/// Whether `text` has no visible content: every character is white space, a control character
/// (Cc) or a format character (Cf). The empty string is blank.
pub fn is_blank(text: &str) -> bool {
    text.chars().all(|c| {
        c.is_whitespace()
            || matches!(
                get_general_category(c),
                GeneralCategory::Control | GeneralCategory::Format
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// White space, Cc and Cf alone are blank; one visible character is not.
    #[test]
    fn blank_prompts() {
        for blank in [
            "",
            "   ",
            "\t\r\n",
            "\u{200b}\u{0007}",
            "\u{0000}",
            "\u{feff}\u{202e}\u{2066}",
            "\u{00ad}\u{2028}\u{3000}",
            "\u{e0001}\u{e007f}",
        ] {
            assert!(is_blank(blank), "{blank:?}");
        }
        for text in ["a", "\u{200b}a", "猫", "\u{0301}", "🙂\u{200d}"] {
            assert!(!is_blank(text), "{text:?}");
        }
    }
}
