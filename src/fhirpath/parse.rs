//! FHIRPath tokenizer and precedence-climbing parser.

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    String(String),
    Integer(i64),
    Decimal(f64),
    Boolean(bool),
    Empty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Mul,
    Div,
    IntDiv,
    Mod,
    Add,
    Sub,
    Concat,
    Union,
    Lt,
    Gt,
    Le,
    Ge,
    Eq,
    Ne,
    Equiv,
    NotEquiv,
    In,
    Contains,
    And,
    Or,
    Xor,
    Implies,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    This,
    Literal(Literal),
    /// `%name`: an environment constant.
    Constant(String),
    /// A bare identifier at the start of a path (member of the input, or a type filter).
    Ident(String),
    Member(Box<Expr>, String),
    Call {
        target: Option<Box<Expr>>,
        name: String,
        args: Vec<Expr>,
    },
    Index(Box<Expr>, Box<Expr>),
    Negate(Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Is(Box<Expr>, String),
    As(Box<Expr>, String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub message: String,
    pub position: usize,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at character {}", self.message, self.position)
    }
}

impl std::error::Error for ParseError {}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    Const(String),
    Sym(&'static str),
}

fn tokenize(src: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |m: &str, p| ParseError {
        message: m.to_string(),
        position: p,
    };
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let end = src[i + 2..].find("*/").ok_or_else(|| err("unterminated comment", i))?;
                i += end + 4;
            }
            b'\'' | b'`' => {
                let quote = c;
                i += 1;
                let mut s = String::new();
                loop {
                    let Some(&b) = bytes.get(i) else {
                        return Err(err("unterminated string", start));
                    };
                    if b == quote {
                        i += 1;
                        break;
                    }
                    if b == b'\\' {
                        // The escaped character may be several bytes long (found by fuzzing).
                        let esc = src[i + 1..].chars().next().ok_or_else(|| err("bad escape", i))?;
                        i += 1 + esc.len_utf8();
                        match esc {
                            'n' => s.push('\n'),
                            't' => s.push('\t'),
                            'r' => s.push('\r'),
                            'f' => s.push('\u{c}'),
                            'u' => {
                                let hex = src.get(i..i + 4).ok_or_else(|| err("bad \\u escape", i))?;
                                let cp = u32::from_str_radix(hex, 16).map_err(|_| err("bad \\u escape", i))?;
                                s.push(char::from_u32(cp).unwrap_or('\u{fffd}'));
                                i += 4;
                            }
                            other => s.push(other),
                        }
                        continue;
                    }
                    let ch = src[i..].chars().next().unwrap_or('\u{fffd}');
                    s.push(ch);
                    i += ch.len_utf8();
                }
                out.push((if quote == b'\'' { Tok::Str(s) } else { Tok::Ident(s) }, start));
            }
            b'0'..=b'9' => {
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                if bytes.get(i) == Some(&b'.') && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                    while i < bytes.len() && bytes[i].is_ascii_digit() {
                        i += 1;
                    }
                }
                out.push((Tok::Num(src[start..i].to_string()), start));
            }
            b'%' => {
                i += 1;
                if bytes.get(i) == Some(&b'`') || bytes.get(i) == Some(&b'\'') {
                    let quote = bytes[i];
                    let end = src[i + 1..]
                        .find(quote as char)
                        .ok_or_else(|| err("unterminated constant", start))?;
                    out.push((Tok::Const(src[i + 1..i + 1 + end].to_string()), start));
                    i += end + 2;
                } else {
                    let s = i;
                    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'-')
                    {
                        i += 1;
                    }
                    out.push((Tok::Const(src[s..i].to_string()), start));
                }
            }
            b'$' | b'A'..=b'Z' | b'a'..=b'z' | b'_' => {
                i += 1;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                out.push((Tok::Ident(src[start..i].to_string()), start));
            }
            _ => {
                const SYMS: [&str; 20] = [
                    "<=", ">=", "!=", "!~", "(", ")", "[", "]", ",", ".", "|", "=", "~", "<", ">", "+", "-", "*", "/",
                    "&",
                ];
                let sym = SYMS
                    .iter()
                    .find(|s| src[i..].starts_with(**s))
                    .ok_or_else(|| err(&format!("unexpected character '{}'", c as char), i))?;
                out.push((Tok::Sym(sym), start));
                i += sym.len();
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    len: usize,
    /// How deep the tree under construction is at the current point.
    depth: usize,
}

/// The longest expression accepted, in bytes. The longest FHIRPath in the R4
/// definitions (an invariant) is under 1,000 characters.
pub const MAX_EXPRESSION_BYTES: usize = 16 * 1024;

/// The deepest expression tree accepted: nesting of parentheses, function
/// arguments, unary operators, and chains of operators or `.member` steps all
/// count. Evaluation recurses along the tree, so this bounds its stack.
pub const MAX_EXPRESSION_DEPTH: usize = 128;

/// Parses a FHIRPath expression, refusing ones longer or deeper than the limits above.
pub fn parse(src: &str) -> Result<Expr, ParseError> {
    if src.len() > MAX_EXPRESSION_BYTES {
        return Err(ParseError {
            message: format!(
                "the expression is {} bytes long; the limit is {MAX_EXPRESSION_BYTES}",
                src.len()
            ),
            position: 0,
        });
    }
    let toks = tokenize(src)?;
    let mut p = Parser {
        toks,
        pos: 0,
        len: src.len(),
        depth: 0,
    };
    let e = p.expr(0)?;
    if p.pos < p.toks.len() {
        return Err(p.error("unexpected trailing input"));
    }
    Ok(e)
}

fn binop(tok: &Tok) -> Option<(BinOp, u8)> {
    let (op, prec) = match tok {
        Tok::Sym("*") => (BinOp::Mul, 9),
        Tok::Sym("/") => (BinOp::Div, 9),
        Tok::Ident(s) if s == "div" => (BinOp::IntDiv, 9),
        Tok::Ident(s) if s == "mod" => (BinOp::Mod, 9),
        Tok::Sym("+") => (BinOp::Add, 8),
        Tok::Sym("-") => (BinOp::Sub, 8),
        Tok::Sym("&") => (BinOp::Concat, 8),
        Tok::Sym("|") => (BinOp::Union, 6),
        Tok::Sym("<") => (BinOp::Lt, 5),
        Tok::Sym(">") => (BinOp::Gt, 5),
        Tok::Sym("<=") => (BinOp::Le, 5),
        Tok::Sym(">=") => (BinOp::Ge, 5),
        Tok::Sym("=") => (BinOp::Eq, 4),
        Tok::Sym("!=") => (BinOp::Ne, 4),
        Tok::Sym("~") => (BinOp::Equiv, 4),
        Tok::Sym("!~") => (BinOp::NotEquiv, 4),
        Tok::Ident(s) if s == "in" => (BinOp::In, 3),
        Tok::Ident(s) if s == "contains" => (BinOp::Contains, 3),
        Tok::Ident(s) if s == "and" => (BinOp::And, 2),
        Tok::Ident(s) if s == "or" => (BinOp::Or, 1),
        Tok::Ident(s) if s == "xor" => (BinOp::Xor, 1),
        Tok::Ident(s) if s == "implies" => (BinOp::Implies, 0),
        _ => return None,
    };
    Some((op, prec))
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.0)
    }

    fn error(&self, msg: &str) -> ParseError {
        ParseError {
            message: msg.to_string(),
            position: self.toks.get(self.pos).map_or(self.len, |t| t.1),
        }
    }

    fn eat(&mut self, sym: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Sym(s)) if *s == sym) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, sym: &str) -> Result<(), ParseError> {
        if self.eat(sym) {
            Ok(())
        } else {
            Err(self.error(&format!("expected '{sym}'")))
        }
    }

    /// Goes one level deeper, or fails naming the limit.
    fn deeper(&mut self, levels: usize) -> Result<(), ParseError> {
        self.depth += levels;
        if self.depth > MAX_EXPRESSION_DEPTH {
            return Err(self.error(&format!(
                "the expression nests deeper than {MAX_EXPRESSION_DEPTH} levels (operators, parentheses, calls and steps all count)"
            )));
        }
        Ok(())
    }

    fn expr(&mut self, min_prec: u8) -> Result<Expr, ParseError> {
        self.deeper(1)?;
        let outer = self.depth;
        let e = self.expr_chain(min_prec);
        self.depth = outer - 1;
        e
    }

    fn expr_chain(&mut self, min_prec: u8) -> Result<Expr, ParseError> {
        let mut lhs = self.unary()?;
        while self.peek().is_some() {
            // Each operator of a chain puts the tree built so far one level deeper.
            self.deeper(1)?;
            let Some(tok) = self.peek() else { break };
            // `is` and `as` bind between additive and union operators.
            if let Tok::Ident(kw) = tok {
                if (kw == "is" || kw == "as") && min_prec <= 7 {
                    let is = kw == "is";
                    self.pos += 1;
                    let ty = self.type_specifier()?;
                    lhs = if is {
                        Expr::Is(Box::new(lhs), ty)
                    } else {
                        Expr::As(Box::new(lhs), ty)
                    };
                    continue;
                }
            }
            let Some((op, prec)) = binop(tok) else { break };
            if prec < min_prec {
                break;
            }
            self.pos += 1;
            let rhs = self.expr(prec + 1)?;
            lhs = Expr::Binary(op, Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn type_specifier(&mut self) -> Result<String, ParseError> {
        let mut name = match self.toks.get(self.pos) {
            Some((Tok::Ident(s), _)) => s.clone(),
            _ => return Err(self.error("expected a type name")),
        };
        self.pos += 1;
        // Qualified names such as `FHIR.Patient` or `System.String`.
        while matches!(self.peek(), Some(Tok::Sym("."))) {
            if let Some((Tok::Ident(s), _)) = self.toks.get(self.pos + 1) {
                name = s.clone();
                self.pos += 2;
            } else {
                break;
            }
        }
        Ok(name)
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        self.deeper(1)?;
        let outer = self.depth;
        let e = self.unary_inner();
        self.depth = outer - 1;
        e
    }

    fn unary_inner(&mut self) -> Result<Expr, ParseError> {
        if self.eat("-") {
            return Ok(Expr::Negate(Box::new(self.unary()?)));
        }
        if self.eat("+") {
            return self.unary();
        }
        let mut e = self.term()?;
        loop {
            if matches!(self.peek(), Some(Tok::Sym("." | "["))) {
                // Each step wraps the tree built so far.
                self.deeper(1)?;
            }
            if self.eat(".") {
                let name = match self.toks.get(self.pos) {
                    Some((Tok::Ident(s), _)) => s.clone(),
                    _ => return Err(self.error("expected a name after '.'")),
                };
                self.pos += 1;
                if self.eat("(") {
                    let args = self.args()?;
                    e = Expr::Call {
                        target: Some(Box::new(e)),
                        name,
                        args,
                    };
                } else {
                    e = Expr::Member(Box::new(e), name);
                }
            } else if self.eat("[") {
                let idx = self.expr(0)?;
                self.expect("]")?;
                e = Expr::Index(Box::new(e), Box::new(idx));
            } else {
                break;
            }
        }
        Ok(e)
    }

    fn args(&mut self) -> Result<Vec<Expr>, ParseError> {
        let mut args = Vec::new();
        if self.eat(")") {
            return Ok(args);
        }
        loop {
            args.push(self.expr(0)?);
            if self.eat(")") {
                return Ok(args);
            }
            self.expect(",")?;
        }
    }

    fn term(&mut self) -> Result<Expr, ParseError> {
        let Some((tok, _)) = self.toks.get(self.pos).cloned() else {
            return Err(self.error("unexpected end of expression"));
        };
        self.pos += 1;
        Ok(match tok {
            Tok::Str(s) => Expr::Literal(Literal::String(s)),
            Tok::Num(n) => {
                if n.contains('.') {
                    Expr::Literal(Literal::Decimal(n.parse().map_err(|_| self.error("bad number"))?))
                } else {
                    Expr::Literal(Literal::Integer(n.parse().map_err(|_| self.error("bad number"))?))
                }
            }
            Tok::Const(c) => Expr::Constant(c),
            Tok::Sym("(") => {
                let e = self.expr(0)?;
                self.expect(")")?;
                e
            }
            Tok::Sym("{") => Expr::Literal(Literal::Empty),
            Tok::Ident(name) => match name.as_str() {
                "true" => Expr::Literal(Literal::Boolean(true)),
                "false" => Expr::Literal(Literal::Boolean(false)),
                "$this" => Expr::This,
                _ if self.eat("(") => {
                    let args = self.args()?;
                    Expr::Call {
                        target: None,
                        name,
                        args,
                    }
                }
                _ => Expr::Ident(name),
            },
            Tok::Sym(s) => {
                self.pos -= 1;
                return Err(self.error(&format!("unexpected '{s}'")));
            }
        })
    }
}
