//! Recursive-descent parser turning tokens into an [`Expr`], following
//! libcalico-go's `parser/parser.go`: `||` binds loosest, then `&&`, then
//! (collapsed) leading `!`s.

use crate::ParseError;
use crate::ast::{Expr, sorted_set};
use crate::tokenizer::{self, Kind, Token};

/// Deepest parenthesis nesting accepted. Calico has no limit; one is needed
/// here so that hostile input cannot overflow the stack.
pub const MAX_NESTING: usize = 128;

/// Parses a selector into its syntax tree; empty input gives [`Expr::All`].
pub fn parse_expr(input: &str) -> Result<Expr, ParseError> {
    let tokens = tokenizer::tokenize(input)?;
    let mut p = Parser {
        tokens: &tokens,
        next: 0,
        depth: 0,
    };
    if p.peek().kind == Kind::EOF {
        return Ok(Expr::All);
    }
    let expr = p.or_expr()?;
    let rest = p.peek();
    if rest.kind != Kind::EOF {
        return Err(ParseError::new(
            "unexpected content at end of selector",
            rest.position,
            rest.to_string(),
        ));
    }
    Ok(expr)
}

struct Parser<'t, 'a> {
    /// Never empty: the tokenizer always ends the list with EOF.
    tokens: &'t [Token<'a>],
    next: usize,
    depth: usize,
}

impl<'a> Parser<'_, 'a> {
    /// The token `k` places ahead, or the final EOF if that is past the end.
    fn ahead(&self, k: usize) -> Token<'a> {
        let last = self.tokens.len().saturating_sub(1);
        self.tokens
            .get((self.next + k).min(last))
            .copied()
            .unwrap_or(Token {
                kind: Kind::EOF,
                value: "",
                position: 0,
            })
    }

    fn peek(&self) -> Token<'a> {
        self.ahead(0)
    }

    /// Moves past `n` tokens, but never past the final EOF.
    fn bump(&mut self, n: usize) {
        self.next = (self.next + n).min(self.tokens.len().saturating_sub(1));
    }

    fn or_expr(&mut self) -> Result<Expr, ParseError> {
        let first = self.and_expr()?;
        if self.peek().kind != Kind::Or {
            return Ok(first);
        }
        let mut ops = vec![first];
        while self.peek().kind == Kind::Or {
            self.bump(1);
            ops.push(self.and_expr()?);
        }
        Ok(Expr::Or(ops))
    }

    fn and_expr(&mut self) -> Result<Expr, ParseError> {
        let first = self.operation()?;
        if self.peek().kind != Kind::And {
            return Ok(first);
        }
        let mut ops = vec![first];
        while self.peek().kind == Kind::And {
            self.bump(1);
            ops.push(self.operation()?);
        }
        Ok(Expr::And(ops))
    }

    /// A single, possibly negated, operation or parenthesised expression.
    fn operation(&mut self) -> Result<Expr, ParseError> {
        let mut negated = false;
        while self.peek().kind == Kind::Not {
            negated = !negated;
            self.bump(1);
        }
        let tok = self.peek();
        let expr = match tok.kind {
            Kind::Has => {
                self.bump(1);
                Expr::Has {
                    label: tok.value.to_owned(),
                }
            }
            Kind::All => {
                self.bump(1);
                Expr::All
            }
            Kind::Global => {
                self.bump(1);
                Expr::Global
            }
            Kind::Label => self.label_operation(tok)?,
            Kind::LParen => {
                if self.depth >= MAX_NESTING {
                    return Err(ParseError::new(
                        "selector nested too deeply",
                        tok.position,
                        format!("more than {MAX_NESTING} levels of parentheses"),
                    ));
                }
                self.depth += 1;
                self.bump(1);
                let inner = self.or_expr()?;
                self.depth -= 1;
                let close = self.peek();
                if close.kind != Kind::RParen {
                    return Err(ParseError::new(
                        "expected )",
                        close.position,
                        format!("found {close}"),
                    ));
                }
                self.bump(1);
                inner
            }
            _ => {
                let what = if tok.kind == Kind::EOF {
                    "unexpected end of selector"
                } else {
                    "unexpected token"
                };
                return Err(ParseError::new(what, tok.position, tok.to_string()));
            }
        };
        Ok(if negated {
            Expr::Not(Box::new(expr))
        } else {
            expr
        })
    }

    /// `label <op> "string"` or `label [not] in {set}`; `label_tok` is next.
    fn label_operation(&mut self, label_tok: Token<'a>) -> Result<Expr, ParseError> {
        let op = self.ahead(1);
        if op.kind == Kind::EOF {
            return Err(ParseError::new(
                "unexpected end of selector looking for operator",
                op.position,
                format!("after label {:?}", label_tok.value),
            ));
        }
        let label = label_tok.value.to_owned();
        let arg = self.ahead(2);
        let value = || {
            if arg.kind == Kind::StringLiteral {
                Ok(arg.value.to_owned())
            } else {
                Err(ParseError::new(
                    "expected string",
                    arg.position,
                    format!("found {arg}"),
                ))
            }
        };
        let expr = match op.kind {
            Kind::Eq => Expr::Eq {
                label,
                value: value()?,
            },
            Kind::Ne => Expr::Ne {
                label,
                value: value()?,
            },
            Kind::Contains => Expr::Contains {
                label,
                value: value()?,
            },
            Kind::StartsWith => Expr::StartsWith {
                label,
                value: value()?,
            },
            Kind::EndsWith => Expr::EndsWith {
                label,
                value: value()?,
            },
            Kind::In | Kind::NotIn => {
                if arg.kind != Kind::LBrace {
                    return Err(ParseError::new(
                        "expected set literal",
                        arg.position,
                        format!("found {arg}"),
                    ));
                }
                self.bump(3);
                let values = sorted_set(self.set_members()?);
                return Ok(if op.kind == Kind::In {
                    Expr::In { label, values }
                } else {
                    Expr::NotIn { label, values }
                });
            }
            _ => {
                return Err(ParseError::new(
                    "expected operator",
                    op.position,
                    format!("found {op} after label {:?}", label_tok.value),
                ));
            }
        };
        self.bump(3);
        Ok(expr)
    }

    /// Set members after `{`, up to and including `}`; a trailing comma is allowed.
    fn set_members(&mut self) -> Result<Vec<String>, ParseError> {
        let mut values = Vec::new();
        while self.peek().kind == Kind::StringLiteral {
            values.push(self.peek().value.to_owned());
            self.bump(1);
            if self.peek().kind != Kind::Comma {
                break;
            }
            self.bump(1);
        }
        let close = self.peek();
        if close.kind != Kind::RBrace {
            return Err(ParseError::new(
                "expected }",
                close.position,
                format!("found {close}"),
            ));
        }
        self.bump(1);
        Ok(values)
    }
}
