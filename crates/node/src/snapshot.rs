//! BGP community values as `BGPConfiguration` writes them (`a:b`, `a:b:c`), for
//! the prefixes the agent advertises.

/// A parsed BGP community value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Community {
    /// `a:b` (16-bit halves).
    Standard(u32),
    /// `a:b:c` (32-bit parts).
    Large(u32, u32, u32),
}

/// Parses `a:b` or `a:b:c`.
pub fn parse_community(s: &str) -> Option<Community> {
    let parts: Vec<&str> = s.split(':').collect();
    match parts.as_slice() {
        [a, b] => {
            let a: u16 = a.trim().parse().ok()?;
            let b: u16 = b.trim().parse().ok()?;
            Some(Community::Standard((u32::from(a) << 16) | u32::from(b)))
        }
        [a, b, c] => Some(Community::Large(
            a.trim().parse().ok()?,
            b.trim().parse().ok()?,
            c.trim().parse().ok()?,
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn communities_parse() {
        assert_eq!(
            parse_community("65000:100"),
            Some(Community::Standard((65000 << 16) | 100))
        );
        assert_eq!(parse_community("1:2:3"), Some(Community::Large(1, 2, 3)));
        assert_eq!(parse_community("70000:1"), None);
        assert_eq!(parse_community("x"), None);
    }
}
