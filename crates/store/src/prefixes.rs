//! Sets of key prefixes, as [`crate::Datastore::list_prefixes`] reads them: callers may
//! pass overlapping prefixes in any order, and every backend needs the same answer to
//! "which ranges do I read, in which order, so that each key comes once and sorted".

/// The prefixes that cover every key under any of `prefixes`, sorted byte-wise, none of
/// them a prefix of another (a prefix under another one adds nothing; the empty prefix
/// covers everything). The key ranges of the result are disjoint and in key order, so
/// reading them one after the other yields each key once, sorted.
pub fn disjoint(prefixes: &[&str]) -> Vec<String> {
    let mut sorted: Vec<&str> = prefixes.to_vec();
    // `str` orders byte-wise, as keys do; a prefix sorts before every string it starts.
    sorted.sort_unstable();
    sorted.dedup();
    let mut kept: Vec<String> = Vec::with_capacity(sorted.len());
    for prefix in sorted {
        // Only the last kept prefix can cover this one: anything it covers sorts
        // right after it.
        if kept
            .last()
            .is_some_and(|last| prefix.starts_with(last.as_str()))
        {
            continue;
        }
        kept.push(prefix.to_string());
    }
    kept
}

/// The longest prefix shared by all of `prefixes` (cut back to a character boundary, so
/// that it is still text); empty when `prefixes` is.
pub fn common(prefixes: &[String]) -> String {
    let Some((first, rest)) = prefixes.split_first() else {
        return String::new();
    };
    let mut len = first.len();
    for p in rest {
        len = first
            .bytes()
            .zip(p.bytes())
            .take(len)
            .take_while(|(a, b)| a == b)
            .count();
    }
    while !first.is_char_boundary(len) {
        len -= 1;
    }
    first[..len].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_and_repeated_prefixes_collapse_to_disjoint_sorted_ones() {
        assert_eq!(
            disjoint(&["/b/", "/a/x/", "/a/", "/b/", "/a/xy", "/c"]),
            vec!["/a/", "/b/", "/c"]
        );
        // A prefix is text: "/a" covers "/a/" and "/ab", but "/a/" does not cover "/ab".
        assert_eq!(disjoint(&["/ab", "/a/"]), vec!["/a/", "/ab"]);
        assert_eq!(disjoint(&["/ab", "/a/", "/a"]), vec!["/a"]);
        assert_eq!(disjoint(&["/x", ""]), vec![""]);
        assert_eq!(disjoint(&[]), Vec::<String>::new());
        // Byte order, not character order: 'z' (7a) < 'é' (c3 a9).
        assert_eq!(disjoint(&["/é/", "/z/"]), vec!["/z/", "/é/"]);
    }

    #[test]
    fn common_prefix_stays_on_character_boundaries() {
        let s = |v: &[&str]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        assert_eq!(
            common(&s(&["/calico/ipam/v2/", "/calico/resources/"])),
            "/calico/"
        );
        assert_eq!(common(&s(&["/a/"])), "/a/");
        assert_eq!(common(&s(&["/a/", "/b/"])), "/");
        // 'é' (c3 a9) and 'è' (c3 a8) share a first byte, which alone is no text.
        assert_eq!(common(&s(&["/é", "/è"])), "/");
        assert_eq!(common(&[]), "");
    }
}
