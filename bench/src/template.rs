//! The peers' configuration templates (bench/proxy/*.cfg, *.conf, *.yaml): `{{KEY}}` placeholders.

use crate::Error;

/// Replaces every `{{KEY}}` of `template` with its value; a placeholder left without a value is
/// an error naming it (a template and the driver that disagree must not start a proxy).
pub fn render(template: &str, vars: &[(&str, String)], what: &str) -> Result<String, Error> {
    let mut out = template.to_string();
    for (key, value) in vars {
        out = out.replace(&format!("{{{{{key}}}}}"), value);
    }
    if let Some(start) = out.find("{{") {
        let rest = &out[start..];
        let name = rest.find("}}").map_or(rest, |end| &rest[..end + 2]);
        return Err(Error::parse(what, format!("placeholder {name} has no value")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_everywhere() {
        let text = "listen {{PORT}};\nproxy_pass http://127.0.0.1:{{UPSTREAM}}; # {{PORT}}\n";
        let vars = [("PORT", "8080".to_string()), ("UPSTREAM", "9090".to_string())];
        assert_eq!(
            render(text, &vars, "t").expect("renders"),
            "listen 8080;\nproxy_pass http://127.0.0.1:9090; # 8080\n"
        );
    }

    #[test]
    fn a_placeholder_left_is_an_error_naming_it() {
        let error =
            render("a {{PORT}} b {{CA}}", &[("PORT", "1".into())], "haproxy-a.mtls.cfg").expect_err("CA");
        assert_eq!(error.to_string(), "haproxy-a.mtls.cfg: placeholder {{CA}} has no value");
    }

    #[test]
    fn every_template_renders_with_the_values_the_driver_gives() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("bench/proxy") {
            let path = entry.expect("an entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
            if !(name.ends_with(".cfg") || name.ends_with(".conf") || name.ends_with(".yaml")) {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("readable");
            let vars: Vec<(&str, String)> = [
                "DIR",
                "PORT",
                "UPSTREAM",
                "ADMIN",
                "OUTBOUND",
                "INBOUND",
                "IDENTITY_PORT",
                "BUNDLE",
                "CA",
                "SERVER_CRT",
                "SERVER_KEY",
                "SERVER_PEM",
                "CLIENT_CRT",
                "CLIENT_KEY",
                "CLIENT_PEM",
                // The redirect path's (*.redirect.*): full addresses, bench/src/peers/redirect.rs.
                "LISTEN",
                "SERVICE",
                "IDENTITY",
                // The workloads' origin protocol (bench/src/peers/haproxy.rs, envoy.rs).
                "ORIGIN_PROTO",
                "ORIGIN_PROTOCOL",
            ]
            .into_iter()
            .map(|k| (k, "x".to_string()))
            .collect();
            render(&text, &vars, &name).expect("every placeholder is one the driver fills");
            seen += 1;
        }
        assert!(seen >= 17, "only {seen} templates in bench/proxy");
    }
}
