//! Reads a callgrind record (its name-compressed text format): the functions that ran, in order
//! of first appearance, with the instructions each executed itself.

use std::collections::HashMap;

use crate::Error;

/// (object file's base name, function name) → own instructions (Ir), in order of first appearance.
#[derive(Debug, Default, PartialEq)]
pub struct Costs {
    pub functions: Vec<((String, String), u64)>,
}

impl Costs {
    pub fn total(&self) -> u64 {
        self.functions.iter().map(|(_, ir)| ir).sum()
    }
}

/// Resolves a compressed name: "(7) name" defines id 7, a later "(7)" refers to it.
fn resolve(spec: &str, table: &mut HashMap<String, String>, what: &str) -> Result<String, Error> {
    let Some(rest) = spec.strip_prefix('(') else { return Ok(spec.to_string()) };
    let (id, name) = rest
        .split_once(')')
        .ok_or_else(|| Error::parse(what, format!("name {spec:?} has no closing ')'")))?;
    if let Some(name) = name.strip_prefix(' ') {
        table.insert(id.to_string(), name.to_string());
        return Ok(name.to_string());
    }
    table.get(id).cloned().ok_or_else(|| {
        Error::parse(what, format!("name id ({id}) is used before it is defined: is the record cut?"))
    })
}

fn base_name(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

/// Callgrind marks recursion levels as "name'2".
fn strip_recursion(name: &str) -> &str {
    match name.rsplit_once('\'') {
        Some((head, level)) if !level.is_empty() && level.bytes().all(|b| b.is_ascii_digit()) => head,
        _ => name,
    }
}

/// Parses the text of a callgrind record. "cfn=" (a callee) shares the ids of "fn=", "cob=" those
/// of "ob="; a cost line right after "calls=" is the inclusive cost of that call, not the caller's own.
pub fn parse(text: &str, what: &str) -> Result<Costs, Error> {
    if !text.lines().any(|l| l.starts_with("events:")) {
        return Err(Error::parse(what, "no \"events:\" line: not a callgrind record"));
    }
    let (mut objects, mut names) = (HashMap::new(), HashMap::new());
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    let mut costs = Costs::default();
    let mut current: Option<usize> = None;
    let mut current_object: Option<String> = None;
    let mut in_call = false;
    for line in text.lines() {
        if let Some(spec) = line.strip_prefix("ob=") {
            current_object = Some(resolve(spec, &mut objects, what)?);
        } else if let Some(spec) = line.strip_prefix("cob=") {
            resolve(spec, &mut objects, what)?;
        } else if let Some(spec) = line.strip_prefix("cfn=") {
            resolve(spec, &mut names, what)?;
        } else if let Some(spec) = line.strip_prefix("fn=") {
            let name = resolve(spec, &mut names, what)?;
            let key =
                (base_name(current_object.as_deref().unwrap_or("?")), strip_recursion(&name).to_string());
            let i = *index.entry(key.clone()).or_insert_with(|| {
                costs.functions.push((key, 0));
                costs.functions.len() - 1
            });
            current = Some(i);
        } else if line.starts_with("calls=") {
            in_call = true;
        } else if line.starts_with(|c: char| c.is_ascii_digit() || "+-*".contains(c)) {
            if in_call {
                in_call = false;
            } else if let Some(i) = current {
                let mut fields = line.split_whitespace();
                if let (Some(_position), Some(ir)) = (fields.next(), fields.next()) {
                    let ir: u64 = ir.parse().map_err(|_| {
                        Error::parse(what, format!("cost line {line:?}: {ir:?} is not a count"))
                    })?;
                    costs.functions[i].1 += ir;
                }
            }
        }
    }
    Ok(costs)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const RECORD: &str = "# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 42
cmd:  target/proxy/braid-proxy --config x
events: Ir
ob=(1) /work/target/proxy/braid-proxy
fl=(1) ???
fn=(1) _ZN11braid_proxy4main17h0123456789abcdefE
0 100
cob=(2) /usr/lib/x86_64-linux-gnu/libc.so.6
cfn=(2) memcpy
calls=3 0
0 900
+1 20
fn=(3) _ZN5hyper5proto2h117h1111111111111111E'2
0 50
ob=(2)
fn=(2)
0 300
ob=(1)
fn=(1)
* 5
";

    #[test]
    fn own_instructions_per_function_in_order_of_first_appearance() {
        let costs = parse(RECORD, "callgrind.out").expect("parses");
        let list: Vec<(&str, &str, u64)> =
            costs.functions.iter().map(|((o, n), ir)| (o.as_str(), n.as_str(), *ir)).collect();
        assert_eq!(
            list,
            [
                ("braid-proxy", "_ZN11braid_proxy4main17h0123456789abcdefE", 125),
                ("braid-proxy", "_ZN5hyper5proto2h117h1111111111111111E", 50),
                ("libc.so.6", "memcpy", 300),
            ]
        );
        assert_eq!(costs.total(), 475);
    }

    #[test]
    fn a_cut_or_foreign_record_is_refused() {
        let error = parse("hello\n", "x").expect_err("not callgrind");
        assert!(error.to_string().contains("not a callgrind record"), "{error}");
        let cut = "events: Ir\nob=(1) a\nfn=(9)\n0 1\n";
        let error = parse(cut, "x").expect_err("undefined id");
        assert!(error.to_string().contains("(9) is used before it is defined"), "{error}");
    }
}
