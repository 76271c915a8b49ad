//! Port lists as the skip-port annotations and `braid-proxy init` spell them: "25,443,8000-8100".
//! Here, kube-free, because the webhook renders them and the proxy parses them back.

use std::fmt;

/// One port, or an inclusive range of ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub const fn single(port: u16) -> Self {
        Self { first: port, last: port }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Parses a comma-separated list of ports and ranges. Blanks around items and empty items (a
/// trailing comma) are tolerated; anything else that is not a port 1-65535 or a range `low-high`
/// is an error that says which item is wrong, because the alternative, silently dropping it,
/// would intercept traffic the user asked us to leave alone.
pub fn parse_port_list(value: &str) -> Result<Vec<PortRange>, String> {
    let mut ranges = Vec::new();
    for item in value.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let range = match item.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (parse_port(first.trim(), item)?, parse_port(last.trim(), item)?);
                if first > last {
                    return Err(format!("range {item:?} ends before it starts; write it low-high"));
                }
                PortRange { first, last }
            }
            None => PortRange::single(parse_port(item, item)?),
        };
        if !ranges.contains(&range) {
            ranges.push(range);
        }
    }
    Ok(ranges)
}

fn parse_port(text: &str, item: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!(
            "{item:?} is not a port (1-65535) or a range of ports like 8000-8100; \
             separate items with commas"
        )),
        Ok(port) => Ok(port),
    }
}

/// Renders ranges the way `braid-proxy init` takes them: "4191,8000-8100".
pub fn render(ranges: &[PortRange]) -> String {
    ranges.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_ranges_parse_and_render_back() {
        let ranges = parse_port_list(" 25, 8000-8100 ,443,25,").unwrap();
        assert_eq!(
            ranges,
            vec![PortRange::single(25), PortRange { first: 8000, last: 8100 }, PortRange::single(443)]
        );
        assert_eq!(render(&ranges), "25,8000-8100,443");
        assert_eq!(parse_port_list("").unwrap(), vec![]);
    }

    #[test]
    fn malformed_items_are_named_in_the_error() {
        for (value, needle) in [
            ("80,http", "\"http\" is not a port"),
            ("0", "\"0\" is not a port"),
            ("70000", "\"70000\" is not a port"),
            ("9000-8000", "ends before it starts"),
            ("80-", "\"80-\" is not a port"),
            ("1-2-3", "\"1-2-3\" is not a port"),
            ("-5", "\"-5\" is not a port"),
        ] {
            let err = parse_port_list(value).unwrap_err();
            assert!(err.contains(needle), "{value:?}: {err}");
        }
    }
}
