//! Pieces shared by the macros: error collection and key templates.

use proc_macro2::Span;

/// Collects errors so that all of them are reported at once.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, span: Span, msg: impl std::fmt::Display) {
        let e = syn::Error::new(span, msg);
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub(crate) fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// A piece of a `"text{placeholder}text"` key template.
pub(crate) enum Token<'a> {
    Text(&'a str),
    Placeholder(&'a str),
}

/// Splits a key template into literal text and `{placeholder}` names.
pub(crate) fn split_template(template: &str) -> Result<Vec<Token<'_>>, &'static str> {
    if template.is_empty() {
        return Err("the template is empty");
    }
    let mut out = Vec::new();
    let mut rest = template;
    while !rest.is_empty() {
        if let Some(stripped) = rest.strip_prefix('{') {
            let end = stripped.find('}').ok_or("unclosed `{` in the template")?;
            out.push(Token::Placeholder(stripped[..end].trim()));
            rest = &stripped[end + 1..];
        } else {
            let end = rest.find('{').unwrap_or(rest.len());
            out.push(Token::Text(&rest[..end]));
            rest = &rest[end..];
        }
    }
    Ok(out)
}

/// Characters allowed in the literal text of a key template.
pub(crate) fn key_text_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '=' | '/' | '@' | '+')
}

/// The message for a character [`key_text_char`] refuses.
pub(crate) fn bad_key_char(c: char) -> String {
    format!(
        "{c:?} is not allowed in the literal text of a key template (letters, digits and `_ - . : = / @ +` are)"
    )
}
