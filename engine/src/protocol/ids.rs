//! The one rule for user, device, group and message ids, on the WebSocket and the HTTP
//! API alike (so the API cannot queue for a user who could never log in): 1 to
//! [`ID_BYTES_MAX`] bytes of printable characters.
//!
//! Refused: control characters (log injection: a newline forges a log line), whitespace
//! (`"alice "` beside `"alice"`), and the invisible format characters: bidi overrides
//! (`"\u{202E}nimda"` shows as `admin`), zero-width characters, joiners and fillers, with which
//! two ids that differ look the same.

/// The longest id accepted, in bytes.
pub const ID_BYTES_MAX: usize = 128;

/// Why an id is refused; the text completes "field 'x' …".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty or over [`ID_BYTES_MAX`] bytes.
    #[error("must be 1 to 128 bytes")]
    Length,
    /// A control, whitespace or invisible format character.
    #[error("must hold only printable characters (no control, whitespace, bidi or zero-width characters)")]
    Unprintable,
}

/// Checks `id` against the rule.
///
/// Hot path (every message's ids): printable ASCII, the common case, is one pass over the
/// bytes; only other text is decoded.
pub fn check(id: &str) -> Result<(), IdError> {
    if id.is_empty() || id.len() > ID_BYTES_MAX {
        return Err(IdError::Length);
    }
    if id.bytes().all(|b| b.is_ascii_graphic()) {
        return Ok(());
    }
    if id.chars().any(unprintable) {
        return Err(IdError::Unprintable);
    }
    Ok(())
}

/// Control and whitespace characters, and the invisible ones: Unicode's format characters
/// (general category Cf), combining grapheme joiner, Hangul fillers, and variation
/// selectors.
fn unprintable(c: char) -> bool {
    c.is_control()
        || c.is_whitespace()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061C}'
                | '\u{06DD}'
                | '\u{070F}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08E2}'
                | '\u{115F}'..='\u{1160}'
                | '\u{17B4}'..='\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn printable_ids_pass_in_any_script() {
        for id in ["u1", "alice@example.com", "42", "Zoë", "用户", "حسن", "👩"] {
            assert_eq!(check(id), Ok(()), "{id:?}");
        }
        assert_eq!(check(&"a".repeat(ID_BYTES_MAX)), Ok(()));
    }

    #[test]
    fn lengths_out_of_bounds_are_refused() {
        assert_eq!(check(""), Err(IdError::Length));
        assert_eq!(check(&"a".repeat(ID_BYTES_MAX + 1)), Err(IdError::Length));
        // Bytes, not characters: 43 three-byte characters are 129 bytes.
        assert_eq!(check(&"用".repeat(43)), Err(IdError::Length));
    }

    #[test]
    fn control_whitespace_bidi_and_invisible_characters_are_refused() {
        for id in [
            "a\0b",
            "alice\nINFO forged log line",
            "tab\there",
            "alice ",
            " alice",
            "no\u{00A0}break",
            "\u{202E}nimda",
            "ad\u{2066}min",
            "ad\u{200B}min",
            "ad\u{200D}min",
            "\u{FEFF}admin",
            "ad\u{00AD}min",
            "ad\u{3164}min",
            "\u{7F}",
            "a\u{E0041}",
        ] {
            assert_eq!(check(id), Err(IdError::Unprintable), "{id:?}");
        }
    }

    proptest! {
        #[test]
        fn an_accepted_id_is_short_and_has_nothing_invisible(id in "\\PC{0,140}") {
            if check(&id).is_ok() {
                prop_assert!(!id.is_empty() && id.len() <= ID_BYTES_MAX);
                prop_assert!(!id.chars().any(|c| c.is_control() || c.is_whitespace()));
            }
        }
    }
}
