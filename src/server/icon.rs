//! Icons (2025-11-25, SEP-973): images a client may show beside a tool,
//! resource, template, prompt or the server itself. Serialized only when a
//! definition has some.

use serde_json::{Map, Value};

use super::ServerError;

/// Longest icon `src` accepted: a `data:` URI carries the whole image, so
/// this bounds what one icon adds to every list page (256 KiB).
pub const ICON_SRC_BYTES_MAX: usize = 256 << 10;
/// Sizes one icon may list.
pub const ICON_SIZES_MAX: usize = 16;
/// Icons one definition may carry.
pub const ICONS_MAX: usize = 16;

/// The background an icon is designed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Theme {
    Light,
    Dark,
}

impl Theme {
    pub fn as_str(self) -> &'static str {
        match self {
            Theme::Light => "light",
            Theme::Dark => "dark",
        }
    }
}

/// One icon: where the image is, and optionally its type, sizes and theme.
///
/// ```
/// use shardmcp::server::{Icon, Theme};
///
/// let icon = Icon::new("https://example.com/icon.png")
///     .unwrap()
///     .mime_type("image/png")
///     .size("48x48")
///     .unwrap()
///     .theme(Theme::Dark);
/// assert_eq!(
///     icon.to_value(),
///     serde_json::json!({"src": "https://example.com/icon.png", "mimeType": "image/png",
///                        "sizes": ["48x48"], "theme": "dark"})
/// );
/// assert!(Icon::new("javascript:alert(1)").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Icon {
    pub src: String,
    pub mime_type: Option<String>,
    pub sizes: Vec<String>,
    pub theme: Option<Theme>,
}

impl Icon {
    /// An icon at `src`: an `https:` or `http:` URL, or a `data:` URI (the
    /// spec allows these; other schemes are refused).
    pub fn new(src: &str) -> Result<Icon, ServerError> {
        let invalid = |reason: &str| ServerError::InvalidIcon {
            src: src.chars().take(64).collect(),
            reason: reason.to_string(),
        };
        if src.len() > ICON_SRC_BYTES_MAX {
            return Err(invalid("src is longer than 256 KiB"));
        }
        if src.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("src must not contain whitespace"));
        }
        let scheme = src.split_once(':').map(|(scheme, _)| scheme);
        let allowed = scheme.is_some_and(|scheme| {
            ["https", "http", "data"]
                .iter()
                .any(|allowed| scheme.eq_ignore_ascii_case(allowed))
        });
        if !allowed {
            return Err(invalid("src must be an https:, http: or data: URI"));
        }
        Ok(Icon {
            src: src.to_string(),
            mime_type: None,
            sizes: Vec::new(),
            theme: None,
        })
    }

    /// The image's MIME type, when the source's own is missing or generic.
    pub fn mime_type(mut self, mime_type: &str) -> Self {
        self.mime_type = Some(mime_type.to_string());
        self
    }

    /// A size the icon may be used at: `WxH` in pixels (`48x48`) or `any`.
    pub fn size(mut self, size: &str) -> Result<Self, ServerError> {
        let pixels = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
        let valid = size == "any"
            || size
                .split_once('x')
                .is_some_and(|(width, height)| pixels(width) && pixels(height));
        if !valid {
            return Err(ServerError::InvalidIcon {
                src: self.src.chars().take(64).collect(),
                reason: format!("size `{size}` is neither WxH nor any"),
            });
        }
        if self.sizes.len() >= ICON_SIZES_MAX {
            return Err(ServerError::InvalidIcon {
                src: self.src.chars().take(64).collect(),
                reason: format!("more than {ICON_SIZES_MAX} sizes"),
            });
        }
        self.sizes.push(size.to_string());
        Ok(self)
    }

    pub fn theme(mut self, theme: Theme) -> Self {
        self.theme = Some(theme);
        self
    }

    pub fn to_value(&self) -> Value {
        let mut out = Map::new();
        out.insert("src".into(), Value::String(self.src.clone()));
        if let Some(mime_type) = &self.mime_type {
            out.insert("mimeType".into(), Value::String(mime_type.clone()));
        }
        if !self.sizes.is_empty() {
            out.insert(
                "sizes".into(),
                Value::Array(self.sizes.iter().cloned().map(Value::String).collect()),
            );
        }
        if let Some(theme) = self.theme {
            out.insert("theme".into(), Value::String(theme.as_str().into()));
        }
        Value::Object(out)
    }
}

/// Adds `icons` to a descriptor when there are any.
pub(super) fn insert_icons(out: &mut Map<String, Value>, icons: &[Icon]) {
    if !icons.is_empty() {
        out.insert(
            "icons".into(),
            Value::Array(icons.iter().map(Icon::to_value).collect()),
        );
    }
}

/// A definition may carry at most [`ICONS_MAX`] icons; checked when the
/// definition joins a server (the builders that take icons are infallible).
pub(super) fn check_icons(owner: &str, icons: &[Icon]) -> Result<(), ServerError> {
    if icons.len() > ICONS_MAX {
        return Err(ServerError::InvalidIcon {
            src: owner.chars().take(64).collect(),
            reason: format!("{} icons; at most {ICONS_MAX}", icons.len()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn icons_serialize_only_what_is_set() {
        let bare = Icon::new("data:image/png;base64,AAAA").unwrap();
        assert_eq!(
            bare.to_value(),
            json!({"src": "data:image/png;base64,AAAA"})
        );
        let full = Icon::new("https://example.com/a.svg")
            .unwrap()
            .mime_type("image/svg+xml")
            .size("any")
            .unwrap()
            .size("16x16")
            .unwrap()
            .theme(Theme::Light);
        assert_eq!(
            full.to_value(),
            json!({"src": "https://example.com/a.svg", "mimeType": "image/svg+xml",
                   "sizes": ["any", "16x16"], "theme": "light"})
        );
        let mut out = Map::new();
        insert_icons(&mut out, &[]);
        assert!(out.is_empty(), "no icons, no key");
    }

    #[test]
    fn bad_sources_and_sizes_are_refused_with_a_reason() {
        for bad in [
            "",
            "icon.png",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "https://a b",
        ] {
            assert!(
                matches!(Icon::new(bad), Err(ServerError::InvalidIcon { .. })),
                "{bad}"
            );
        }
        let huge = format!("data:,{}", "a".repeat(ICON_SRC_BYTES_MAX));
        assert!(Icon::new(&huge).is_err());
        let icon = Icon::new("https://example.com/i.png").unwrap();
        for bad in ["48", "x48", "48x", "48X48", "4 8x48", "big"] {
            assert!(icon.clone().size(bad).is_err(), "{bad}");
        }
        let mut many = icon;
        for _ in 0..ICON_SIZES_MAX {
            many = many.size("1x1").unwrap();
        }
        assert!(many.size("1x1").is_err(), "sizes are bounded");
    }

    #[test]
    fn icon_lists_are_bounded() {
        let icon = Icon::new("https://example.com/i.png").unwrap();
        assert!(check_icons("t", &vec![icon.clone(); ICONS_MAX]).is_ok());
        assert!(matches!(
            check_icons("t", &vec![icon; ICONS_MAX + 1]),
            Err(ServerError::InvalidIcon { .. })
        ));
    }
}
