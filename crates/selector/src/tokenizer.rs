//! Tokenizer for the selector language, behaving like libcalico-go's
//! `lib/selector/tokenizer`: whitespace is space/tab only, strings have no
//! escapes, and operator words (`in`, `not in`, `contains`, ...) only follow a label.

use std::fmt;

use crate::ParseError;

/// Longest label key the tokenizer accepts (Calico's `MaxLabelLength`).
pub const MAX_LABEL_LENGTH: usize = 512;

/// The kind of a token; names match Calico's `tokenizer.Kind` without the `Tok` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A label key, e.g. `projectcalico.org/name`.
    Label,
    /// A quoted string; the value excludes the quotes.
    StringLiteral,
    /// `{`
    LBrace,
    /// `}`
    RBrace,
    /// `,`
    Comma,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `in`
    In,
    /// `!`
    Not,
    /// `not in` (also `notin`).
    NotIn,
    /// `contains`
    Contains,
    /// `starts with` (also `startswith`).
    StartsWith,
    /// `ends with` (also `endswith`).
    EndsWith,
    /// `all()`
    All,
    /// `has(label)`; the value is the label.
    Has,
    /// `(`
    LParen,
    /// `)`
    RParen,
    /// `&&`
    And,
    /// `||`
    Or,
    /// `global()`
    Global,
    /// End of input (always the last token).
    EOF,
}

impl Kind {
    /// The Calico kind name without its `Tok` prefix, e.g. `"StringLiteral"`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Label => "Label",
            Kind::StringLiteral => "StringLiteral",
            Kind::LBrace => "LBrace",
            Kind::RBrace => "RBrace",
            Kind::Comma => "Comma",
            Kind::Eq => "Eq",
            Kind::Ne => "Ne",
            Kind::In => "In",
            Kind::Not => "Not",
            Kind::NotIn => "NotIn",
            Kind::Contains => "Contains",
            Kind::StartsWith => "StartsWith",
            Kind::EndsWith => "EndsWith",
            Kind::All => "All",
            Kind::Has => "Has",
            Kind::LParen => "LParen",
            Kind::RParen => "RParen",
            Kind::And => "And",
            Kind::Or => "Or",
            Kind::Global => "Global",
            Kind::EOF => "EOF",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One token of a selector, borrowing its value from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token<'a> {
    /// What kind of token this is.
    pub kind: Kind,
    /// The label (for `Label` and `Has`) or string contents (for
    /// `StringLiteral`); empty for every other kind.
    pub value: &'a str,
    /// Byte offset of the token's first character in the input.
    pub position: usize,
}

impl fmt::Display for Token<'_> {
    /// A human-readable description, used in error messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Label => write!(f, "label {:?}", self.value),
            Kind::StringLiteral => write!(f, "string {:?}", self.value),
            Kind::Has => write!(f, "'has({})'", self.value),
            Kind::LBrace => f.write_str("'{'"),
            Kind::RBrace => f.write_str("'}'"),
            Kind::Comma => f.write_str("','"),
            Kind::Eq => f.write_str("'=='"),
            Kind::Ne => f.write_str("'!='"),
            Kind::In => f.write_str("'in'"),
            Kind::Not => f.write_str("'!'"),
            Kind::NotIn => f.write_str("'not in'"),
            Kind::Contains => f.write_str("'contains'"),
            Kind::StartsWith => f.write_str("'starts with'"),
            Kind::EndsWith => f.write_str("'ends with'"),
            Kind::All => f.write_str("'all()'"),
            Kind::LParen => f.write_str("'('"),
            Kind::RParen => f.write_str("')'"),
            Kind::And => f.write_str("'&&'"),
            Kind::Or => f.write_str("'||'"),
            Kind::Global => f.write_str("'global()'"),
            Kind::EOF => f.write_str("end of input"),
        }
    }
}

/// Splits a selector into tokens, always ending with an [`Kind::EOF`] token.
pub fn tokenize(input: &str) -> Result<Vec<Token<'_>>, ParseError> {
    let mut tokens = Vec::with_capacity(input.len() / 3 + 2);
    append_tokens(&mut tokens, input)?;
    Ok(tokens)
}

/// Like [`tokenize`], but appends to an existing buffer (which is left in
/// an unspecified state on error).
pub fn append_tokens<'a>(tokens: &mut Vec<Token<'a>>, input: &'a str) -> Result<(), ParseError> {
    let mut lx = Lexer { input, rest: input };
    loop {
        lx.rest = trim_ws(lx.rest);
        let start = lx.pos();
        let Some(&first) = lx.rest.as_bytes().first() else {
            tokens.push(Token {
                kind: Kind::EOF,
                value: "",
                position: start,
            });
            return Ok(());
        };
        let last_was_label = tokens.last().is_some_and(|t| t.kind == Kind::Label);
        let (kind, value) = match first {
            b'(' => lx.single(Kind::LParen),
            b')' => lx.single(Kind::RParen),
            b'{' => lx.single(Kind::LBrace),
            b'}' => lx.single(Kind::RBrace),
            b',' => lx.single(Kind::Comma),
            b'"' | b'\'' => lx.string(first)?,
            b'=' => lx.pair("==", Kind::Eq)?,
            b'&' => lx.pair("&&", Kind::And)?,
            b'|' => lx.pair("||", Kind::Or)?,
            b'!' => match lx.rest.strip_prefix("!=") {
                Some(r) => {
                    lx.rest = r;
                    (Kind::Ne, "")
                }
                None => lx.single(Kind::Not),
            },
            _ if last_was_label => lx.operator(tokens.last().map_or("", |t| t.value))?,
            _ => lx.word()?,
        };
        tokens.push(Token {
            kind,
            value,
            position: start,
        });
    }
}

/// Reports whether `label` is a complete, valid label key.
pub fn is_valid_label(label: &str) -> bool {
    !label.is_empty() && label.len() <= MAX_LABEL_LENGTH && label.bytes().all(is_ident_byte)
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'-')
}

fn trim_ws(s: &str) -> &str {
    s.trim_start_matches([' ', '\t'])
}

fn at_word_boundary(s: &str) -> bool {
    s.as_bytes().first().is_none_or(|&b| !is_ident_byte(b))
}

struct Lexer<'a> {
    input: &'a str,
    rest: &'a str,
}

impl<'a> Lexer<'a> {
    fn pos(&self) -> usize {
        self.input.len() - self.rest.len()
    }

    fn err(&self, message: &str, position: usize, detail: impl Into<String>) -> ParseError {
        ParseError::new(message, position, detail)
    }

    fn single(&mut self, kind: Kind) -> (Kind, &'a str) {
        // All single-character tokens are ASCII, so this is a char boundary.
        self.rest = &self.rest[1..];
        (kind, "")
    }

    fn pair(&mut self, text: &str, kind: Kind) -> Result<(Kind, &'a str), ParseError> {
        match self.rest.strip_prefix(text) {
            Some(r) => {
                self.rest = r;
                Ok((kind, ""))
            }
            None => Err(self.err(&format!("expected {text}"), self.pos(), "")),
        }
    }

    fn string(&mut self, quote: u8) -> Result<(Kind, &'a str), ParseError> {
        let start = self.pos();
        let body = &self.rest[1..];
        match body.bytes().position(|b| b == quote) {
            Some(end) => {
                self.rest = &body[end + 1..];
                Ok((Kind::StringLiteral, &body[..end]))
            }
            None => Err(self.err("unterminated string", start, "")),
        }
    }

    /// Cuts a label key off the front of the remaining input.
    fn identifier(&mut self) -> Result<&'a str, ParseError> {
        let start = self.pos();
        let len = self
            .rest
            .bytes()
            .position(|b| !is_ident_byte(b))
            .unwrap_or(self.rest.len());
        let ident = &self.rest[..len];
        if ident.is_empty() {
            let found = self.rest.chars().next().map_or_else(
                || "end of input".to_owned(),
                |c| format!("unexpected character {c:?}"),
            );
            return Err(self.err("expected label", start, found));
        }
        if ident.len() > MAX_LABEL_LENGTH {
            return Err(self.err(
                "label too long",
                start,
                format!("{} bytes, limit is {MAX_LABEL_LENGTH}", ident.len()),
            ));
        }
        self.rest = &self.rest[len..];
        Ok(ident)
    }

    /// `words` separated by optional whitespace, then a word boundary.
    fn cut_words(&mut self, words: &[&str]) -> bool {
        let mut r = self.rest;
        for word in words {
            match r.strip_prefix(word) {
                Some(after) => r = after,
                None => return false,
            }
            // Like Calico, multi-word operators skip whitespace after every
            // word (so "notin" and "not  in" both work) before the
            // word-boundary check; single words do not.
            if words.len() > 1 {
                r = trim_ws(r);
            }
        }
        if !at_word_boundary(r) {
            return false;
        }
        self.rest = r;
        true
    }

    /// An operator, which is the only thing allowed after a label (apart
    /// from the punctuation handled before this is called).
    fn operator(&mut self, label: &str) -> Result<(Kind, &'a str), ParseError> {
        let kind = if self.cut_words(&["contains"]) {
            Kind::Contains
        } else if self.cut_words(&["starts", "with"]) {
            Kind::StartsWith
        } else if self.cut_words(&["ends", "with"]) {
            Kind::EndsWith
        } else if self.cut_words(&["not", "in"]) {
            Kind::NotIn
        } else if self.cut_words(&["in"]) {
            Kind::In
        } else {
            return Err(self.err(
                "expected operator after label",
                self.pos(),
                format!("{label:?}"),
            ));
        };
        Ok((kind, ""))
    }

    /// `has(label)`, `all()`, `global()` or a bare label.
    fn word(&mut self) -> Result<(Kind, &'a str), ParseError> {
        let start = self.pos();
        if let Some(r) = self.rest.strip_prefix("has(") {
            self.rest = trim_ws(r);
            let ident = self.identifier()?;
            self.close_paren("has(", start)?;
            return Ok((Kind::Has, ident));
        }
        for (text, kind) in [("all(", Kind::All), ("global(", Kind::Global)] {
            if let Some(r) = self.rest.strip_prefix(text) {
                self.rest = r;
                self.close_paren(text, start)?;
                return Ok((kind, ""));
            }
        }
        Ok((Kind::Label, self.identifier()?))
    }

    fn close_paren(&mut self, what: &str, start: usize) -> Result<(), ParseError> {
        self.rest = trim_ws(self.rest);
        match self.rest.strip_prefix(')') {
            Some(r) => {
                self.rest = r;
                Ok(())
            }
            None => Err(self.err(
                &format!("no closing ')' after {what}"),
                self.pos(),
                format!("opened at position {start}"),
            )),
        }
    }
}
