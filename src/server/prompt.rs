//! Prompts: templated messages with arguments.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use serde_json::{json, Map, Value};

use super::content::Content;
use super::icon::{insert_icons, Icon};
use super::Completer;

#[derive(Debug, Clone, PartialEq)]
pub struct PromptArgument {
    pub name: String,
    pub description: Option<String>,
    pub required: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PromptMessage {
    pub role: Role,
    pub content: Content,
}

impl PromptMessage {
    pub fn user(content: Content) -> Self {
        PromptMessage {
            role: Role::User,
            content,
        }
    }

    pub fn assistant(content: Content) -> Self {
        PromptMessage {
            role: Role::Assistant,
            content,
        }
    }

    fn to_value(&self) -> Value {
        let role = match self.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        json!({"role": role, "content": self.content.to_value()})
    }
}

/// What `prompts/get` returns.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PromptResult {
    pub description: Option<String>,
    pub messages: Vec<PromptMessage>,
}

impl PromptResult {
    pub fn to_value(&self) -> Value {
        let mut out = Map::new();
        if let Some(description) = &self.description {
            out.insert("description".into(), Value::String(description.clone()));
        }
        out.insert(
            "messages".into(),
            Value::Array(self.messages.iter().map(PromptMessage::to_value).collect()),
        );
        Value::Object(out)
    }
}

pub type PromptFuture = Pin<Box<dyn Future<Output = Result<PromptResult, String>>>>;
type PromptHandler = Rc<dyn Fn(HashMap<String, String>) -> PromptFuture>;

pub struct Prompt {
    pub name: String,
    pub title: Option<String>,
    pub description: String,
    pub arguments: Vec<PromptArgument>,
    pub icons: Vec<Icon>,
    handler: PromptHandler,
    pub(crate) completer: Option<Completer>,
}

impl Prompt {
    pub fn new<F, Fut>(name: &str, description: &str, handler: F) -> Prompt
    where
        F: Fn(HashMap<String, String>) -> Fut + 'static,
        Fut: Future<Output = Result<PromptResult, String>> + 'static,
    {
        Prompt {
            name: name.to_string(),
            title: None,
            description: description.to_string(),
            arguments: Vec::new(),
            icons: Vec::new(),
            handler: Rc::new(move |args| Box::pin(handler(args))),
            completer: None,
        }
    }

    pub fn title(mut self, title: &str) -> Self {
        self.title = Some(title.to_string());
        self
    }

    pub fn argument(mut self, name: &str, description: &str, required: bool) -> Self {
        self.arguments.push(PromptArgument {
            name: name.to_string(),
            description: Some(description.to_string()),
            required,
        });
        self
    }

    /// An icon a client may show for the prompt.
    pub fn icon(mut self, icon: Icon) -> Self {
        self.icons.push(icon);
        self
    }

    /// Offers completions for the prompt's arguments: (argument, partial
    /// value) → candidates.
    pub fn complete_with(
        mut self,
        completer: impl Fn(&str, &str) -> Vec<String> + 'static,
    ) -> Self {
        self.completer = Some(Rc::new(completer));
        self
    }

    pub fn descriptor(&self) -> Value {
        let mut out = Map::new();
        out.insert("name".into(), Value::String(self.name.clone()));
        if let Some(title) = &self.title {
            out.insert("title".into(), Value::String(title.clone()));
        }
        out.insert(
            "description".into(),
            Value::String(self.description.clone()),
        );
        if !self.arguments.is_empty() {
            let arguments = self
                .arguments
                .iter()
                .map(|argument| {
                    let mut entry = json!({"name": argument.name, "required": argument.required});
                    if let Some(description) = &argument.description {
                        entry["description"] = Value::String(description.clone());
                    }
                    entry
                })
                .collect();
            out.insert("arguments".into(), Value::Array(arguments));
        }
        insert_icons(&mut out, &self.icons);
        Value::Object(out)
    }

    /// Checks the arguments (all strings, required ones present), then runs.
    pub fn get(&self, arguments: HashMap<String, String>) -> Result<PromptFuture, String> {
        if let Some(missing) = self
            .arguments
            .iter()
            .find(|argument| argument.required && !arguments.contains_key(&argument.name))
        {
            return Err(format!(
                "prompt {} needs argument `{}`",
                self.name, missing.name
            ));
        }
        Ok((self.handler)(arguments))
    }
}
