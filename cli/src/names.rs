//! Names: Kubernetes host names to Services, and free-form route names to rule names.

use std::collections::BTreeSet;

/// A Service named by a host: `reviews`, `reviews.shop`, `reviews.shop.svc` or
/// `reviews.shop.svc.cluster.local` (any cluster domain). The namespace is None when the host
/// does not say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceHost {
    pub name: String,
    pub namespace: Option<String>,
}

pub fn service_host(host: &str) -> Result<ServiceHost, String> {
    if host.contains('*') {
        return Err(format!("{host:?} is a wildcard host; a MeshRoute governs one Service"));
    }
    // A fully qualified name may end with the root's dot.
    let labels: Vec<&str> = host.strip_suffix('.').unwrap_or(host).split('.').collect();
    let (name, namespace) = match labels[..] {
        [name] => (name, None),
        [name, namespace] => (name, Some(namespace)),
        [name, namespace, "svc", ..] => (name, Some(namespace)),
        _ => {
            return Err(format!(
                "{host:?} is not a Kubernetes Service name (name, name.namespace or name.namespace.svc.<domain>); \
                 Braid routes Services of the cluster only"
            ));
        }
    };
    if !is_dns_label(name) || namespace.is_some_and(|ns| !is_dns_label(ns)) {
        return Err(format!("{host:?} is not a Kubernetes Service name"));
    }
    Ok(ServiceHost { name: name.to_owned(), namespace: namespace.map(str::to_owned) })
}

/// A Service name: a DNS label that starts with a letter.
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && !name.ends_with('-')
}

/// Rule names of one MeshRoute: free-form names ("GET /books/{id}") made into the DNS-label form
/// the API takes ("get-books-id"), kept unique with a suffix.
#[derive(Default)]
pub struct RuleNames(BTreeSet<String>);

impl RuleNames {
    pub fn name(&mut self, raw: &str) -> Option<String> {
        let mut out = String::new();
        for c in raw.chars().flat_map(char::to_lowercase) {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                out.push(c);
            } else if !out.is_empty() && !out.ends_with('-') {
                out.push('-');
            }
        }
        out.truncate(57);
        let base = out.trim_end_matches('-').to_owned();
        if base.is_empty() {
            return None;
        }
        let mut name = base.clone();
        let mut n = 2;
        while !self.0.insert(name.clone()) {
            name = format!("{base}-{n}");
            n += 1;
        }
        Some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_name_services_of_the_cluster() {
        let host = |h| service_host(h).map(|s| (s.name, s.namespace));
        assert_eq!(host("reviews"), Ok(("reviews".into(), None)));
        assert_eq!(host("reviews.shop"), Ok(("reviews".into(), Some("shop".into()))));
        assert_eq!(host("reviews.shop.svc.cluster.local"), Ok(("reviews".into(), Some("shop".into()))));
        assert_eq!(host("reviews.shop.svc.cluster.local."), Ok(("reviews".into(), Some("shop".into()))));
        assert!(host("api.example.com").is_err());
        assert!(host("*.shop.svc.cluster.local").is_err());
        assert!(host("Reviews").is_err());
    }

    #[test]
    fn rule_names_are_dns_labels_and_unique() {
        let mut names = RuleNames::default();
        assert_eq!(names.name("GET /books/{id}.json").as_deref(), Some("get-books-id-json"));
        assert_eq!(names.name("get books id json").as_deref(), Some("get-books-id-json-2"));
        assert_eq!(names.name("/").as_deref(), None);
        assert_eq!(names.name("v1").as_deref(), Some("v1"));
    }
}
