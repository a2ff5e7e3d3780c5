//! Resources and resource templates: listed, read by URI, completed.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use serde_json::{Map, Value};

use super::content::ResourceContents;
use super::icon::{insert_icons, Icon};
use super::{Completer, ServerError};

/// Why a read produced no contents.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResourceError {
    #[error("resource not found: {0}")]
    NotFound(String),
    #[error("{0}")]
    Failed(String),
}

pub type ReadFuture = Pin<Box<dyn Future<Output = Result<Vec<ResourceContents>, ResourceError>>>>;
/// Reads a resource: the URI asked for and, for a template, its variables.
pub type Reader = Rc<dyn Fn(String, HashMap<String, String>) -> ReadFuture>;

/// A concrete resource.
pub struct Resource {
    pub uri: String,
    pub name: String,
    pub title: Option<String>,
    pub description: Option<String>,
    pub mime_type: Option<String>,
    pub size: Option<u64>,
    pub icons: Vec<Icon>,
    reader: Reader,
}

/// A family of resources named by an RFC 6570 URI template (`{var}` level 1).
pub struct ResourceTemplate {
    pub uri_template: String,
    pub name: String,
    pub title: Option<String>,
    pub description: Option<String>,
    pub mime_type: Option<String>,
    pub icons: Vec<Icon>,
    pattern: UriTemplate,
    reader: Reader,
    pub(crate) completer: Option<Completer>,
}

fn descriptor(
    key: &str,
    value: &str,
    name: &str,
    title: &Option<String>,
    description: &Option<String>,
    mime_type: &Option<String>,
    icons: &[Icon],
) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert(key.into(), Value::String(value.to_string()));
    out.insert("name".into(), Value::String(name.to_string()));
    if let Some(title) = title {
        out.insert("title".into(), Value::String(title.clone()));
    }
    if let Some(description) = description {
        out.insert("description".into(), Value::String(description.clone()));
    }
    if let Some(mime_type) = mime_type {
        out.insert("mimeType".into(), Value::String(mime_type.clone()));
    }
    insert_icons(&mut out, icons);
    out
}

fn boxed_reader<F, Fut>(read: F) -> Reader
where
    F: Fn(String, HashMap<String, String>) -> Fut + 'static,
    Fut: Future<Output = Result<Vec<ResourceContents>, ResourceError>> + 'static,
{
    Rc::new(move |uri, vars| Box::pin(read(uri, vars)))
}

impl Resource {
    pub fn new<F, Fut>(uri: &str, name: &str, read: F) -> Resource
    where
        F: Fn(String) -> Fut + 'static,
        Fut: Future<Output = Result<Vec<ResourceContents>, ResourceError>> + 'static,
    {
        Resource {
            uri: uri.to_string(),
            name: name.to_string(),
            title: None,
            description: None,
            mime_type: None,
            size: None,
            icons: Vec::new(),
            reader: boxed_reader(move |uri, _vars| read(uri)),
        }
    }

    /// A resource whose contents are fixed text.
    pub fn text(uri: &str, name: &str, mime_type: &str, text: &str) -> Resource {
        let contents = ResourceContents::text(uri, mime_type, text);
        Resource::new(uri, name, move |_uri| {
            let contents = contents.clone();
            async move { Ok(vec![contents]) }
        })
        .mime_type(mime_type)
    }

    pub fn title(mut self, title: &str) -> Self {
        self.title = Some(title.to_string());
        self
    }

    pub fn description(mut self, description: &str) -> Self {
        self.description = Some(description.to_string());
        self
    }

    pub fn mime_type(mut self, mime_type: &str) -> Self {
        self.mime_type = Some(mime_type.to_string());
        self
    }

    pub fn size(mut self, bytes: u64) -> Self {
        self.size = Some(bytes);
        self
    }

    /// An icon a client may show for the resource.
    pub fn icon(mut self, icon: Icon) -> Self {
        self.icons.push(icon);
        self
    }

    pub fn descriptor(&self) -> Value {
        let mut out = descriptor(
            "uri",
            &self.uri,
            &self.name,
            &self.title,
            &self.description,
            &self.mime_type,
            &self.icons,
        );
        if let Some(size) = self.size {
            out.insert("size".into(), Value::from(size));
        }
        Value::Object(out)
    }

    pub fn read(&self) -> ReadFuture {
        (self.reader)(self.uri.clone(), HashMap::new())
    }
}

impl ResourceTemplate {
    pub fn new<F, Fut>(
        uri_template: &str,
        name: &str,
        read: F,
    ) -> Result<ResourceTemplate, ServerError>
    where
        F: Fn(String, HashMap<String, String>) -> Fut + 'static,
        Fut: Future<Output = Result<Vec<ResourceContents>, ResourceError>> + 'static,
    {
        let pattern =
            UriTemplate::parse(uri_template).map_err(|reason| ServerError::InvalidTemplate {
                template: uri_template.to_string(),
                reason,
            })?;
        Ok(ResourceTemplate {
            uri_template: uri_template.to_string(),
            name: name.to_string(),
            title: None,
            description: None,
            mime_type: None,
            icons: Vec::new(),
            pattern,
            reader: boxed_reader(read),
            completer: None,
        })
    }

    pub fn title(mut self, title: &str) -> Self {
        self.title = Some(title.to_string());
        self
    }

    pub fn description(mut self, description: &str) -> Self {
        self.description = Some(description.to_string());
        self
    }

    pub fn mime_type(mut self, mime_type: &str) -> Self {
        self.mime_type = Some(mime_type.to_string());
        self
    }

    /// An icon a client may show for the template.
    pub fn icon(mut self, icon: Icon) -> Self {
        self.icons.push(icon);
        self
    }

    /// Offers completions for the template's variables: (variable, partial
    /// value) → candidates.
    pub fn complete_with(
        mut self,
        completer: impl Fn(&str, &str) -> Vec<String> + 'static,
    ) -> Self {
        self.completer = Some(Rc::new(completer));
        self
    }

    pub fn descriptor(&self) -> Value {
        Value::Object(descriptor(
            "uriTemplate",
            &self.uri_template,
            &self.name,
            &self.title,
            &self.description,
            &self.mime_type,
            &self.icons,
        ))
    }

    /// The variables, if `uri` is one of this template's resources.
    pub fn matches(&self, uri: &str) -> Option<HashMap<String, String>> {
        self.pattern.matches(uri)
    }

    pub fn read(&self, uri: &str, variables: HashMap<String, String>) -> ReadFuture {
        (self.reader)(uri.to_string(), variables)
    }
}

/// A parsed level-1 URI template: literals and `{name}` variables.
#[derive(Debug, Clone, PartialEq)]
struct UriTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    Variable(String),
}

impl UriTemplate {
    fn parse(template: &str) -> Result<UriTemplate, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let close = rest[open..].find('}').ok_or("unclosed `{`")? + open;
            let name = &rest[open + 1..close];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "unsupported expression `{{{name}}}` (only simple {{name}} variables)"
                ));
            }
            if matches!(parts.last(), Some(Part::Variable(_))) {
                return Err("two variables must be separated by a literal".into());
            }
            parts.push(Part::Variable(name.to_string()));
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err("unmatched `}`".into());
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(UriTemplate { parts })
    }

    /// Matches `uri`; a variable takes the shortest non-empty text up to the
    /// next literal and never a `/` (level 1 simple expansion).
    fn matches(&self, uri: &str) -> Option<HashMap<String, String>> {
        let mut variables = HashMap::new();
        let mut rest = uri;
        for (index, part) in self.parts.iter().enumerate() {
            match part {
                Part::Literal(literal) => rest = rest.strip_prefix(literal.as_str())?,
                Part::Variable(name) => {
                    let end = match self.parts.get(index + 1) {
                        Some(Part::Literal(next)) => rest.find(next.as_str())?,
                        _ => rest.len(),
                    };
                    let value = &rest[..end];
                    if value.is_empty() || value.contains('/') {
                        return None;
                    }
                    variables.insert(name.clone(), value.to_string());
                    rest = &rest[end..];
                }
            }
        }
        rest.is_empty().then_some(variables)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_and_extract_variables() {
        let t = UriTemplate::parse("test://template/{id}/data").unwrap();
        assert_eq!(t.matches("test://template/123/data").unwrap()["id"], "123");
        assert!(t.matches("test://template//data").is_none());
        assert!(t.matches("test://template/1/2/data").is_none());
        assert!(t.matches("test://template/123/data/more").is_none());
        let t = UriTemplate::parse("file:///{dir}/{name}.txt").unwrap();
        let vars = t.matches("file:///docs/readme.txt").unwrap();
        assert_eq!(
            (vars["dir"].as_str(), vars["name"].as_str()),
            ("docs", "readme")
        );
        let tail = UriTemplate::parse("notes://{name}").unwrap();
        assert_eq!(tail.matches("notes://x").unwrap()["name"], "x");
    }

    #[test]
    fn bad_templates_are_refused_with_a_reason() {
        for bad in ["a://{", "a://{x}{y}", "a://{+x}", "a://x}", "a://{}"] {
            assert!(UriTemplate::parse(bad).is_err(), "{bad}");
        }
    }
}
