//! The Secrets certificates are kept in: read back into text, built with Braid's labels and an
//! optional owner, and written with server-side apply only when they differ from what is wanted.
//!
//! The owner is a Service of the mesh namespace that the Helm chart installs, so that the garbage
//! collector removes the Secrets with the chart; until it exists nothing is written, since what is
//! written then would outlive an uninstall.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::core::v1::{Secret, Service},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};

use super::x509::KeyedCert;

/// Who the written objects belong to.
#[derive(Debug, Clone, PartialEq)]
pub enum Owner {
    /// Nobody: the operator was run by hand, and what it writes stays.
    None,
    /// The named Service, which exists.
    Service(OwnerReference),
    /// The named Service does not exist (not installed yet, or being uninstalled): write nothing.
    Missing,
}

impl Owner {
    /// Looks up `service` in `namespace`; `None` when no owner is wanted.
    pub async fn lookup(
        client: &Client,
        namespace: &str,
        service: Option<&str>,
    ) -> Result<Owner, kube::Error> {
        let Some(service) = service else { return Ok(Owner::None) };
        let services: Api<Service> = Api::namespaced(client.clone(), namespace);
        let Some(meta) = services.get_metadata_opt(service).await? else { return Ok(Owner::Missing) };
        Ok(Owner::Service(OwnerReference {
            api_version: "v1".to_owned(),
            kind: "Service".to_owned(),
            name: service.to_owned(),
            uid: meta.metadata.uid.unwrap_or_default(),
            ..OwnerReference::default()
        }))
    }
}

/// The Secrets of one namespace that one controller writes, all with the same owner.
#[derive(Clone)]
pub struct OwnedSecrets {
    api: Api<Secret>,
    namespace: String,
    owner: Option<OwnerReference>,
}

impl OwnedSecrets {
    pub fn new(client: &Client, namespace: &str, owner: Option<OwnerReference>) -> OwnedSecrets {
        OwnedSecrets {
            api: Api::namespaced(client.clone(), namespace),
            namespace: namespace.to_owned(),
            owner,
        }
    }

    pub fn api(&self) -> &Api<Secret> {
        &self.api
    }

    pub fn owner(&self) -> Option<&OwnerReference> {
        self.owner.as_ref()
    }

    pub async fn get(&self, name: &str) -> Result<Option<Secret>, kube::Error> {
        self.api.get_opt(name).await
    }

    /// The Secret `name` with `data`, Braid's label and the owner.
    pub fn object(&self, name: &str, type_: &str, data: BTreeMap<String, String>) -> Secret {
        object(name, &self.namespace, type_, data, self.owner.as_ref())
    }

    /// Whether `current` carries exactly the owner reference wanted.
    pub fn owns(&self, current: Option<&Secret>) -> bool {
        owned_by(current, self.owner.as_ref())
    }

    /// Writes `object` (from [`OwnedSecrets::object`]) over `read`, the Secret as this pass read
    /// it: created when there was none, else applied (taking over any field another manager set)
    /// on the condition that it has not changed since. So a replica that lost the Lease while a
    /// pass was in flight cannot overwrite the newer root or issuer of the next leader: its write
    /// fails with 409 Conflict and its next pass, if it still leads, starts from what is there.
    pub async fn write(&self, object: &Secret, read: Option<&Secret>) -> Result<(), kube::Error> {
        let mut object = object.clone();
        match read.and_then(|secret| secret.metadata.resource_version.clone()) {
            None => {
                self.api.create(&kube::api::PostParams::default(), &object).await?;
            }
            Some(version) => {
                object.metadata.resource_version = Some(version);
                let name = object.metadata.name.clone().unwrap_or_default();
                let params = PatchParams::apply(crate::FIELD_MANAGER).force();
                self.api.patch(&name, &params, &Patch::Apply(&object)).await?;
            }
        }
        Ok(())
    }
}

/// The Secret `name` of `namespace` with `data`, Braid's label and `owner`.
pub fn object(
    name: &str,
    namespace: &str,
    type_: &str,
    data: BTreeMap<String, String>,
    owner: Option<&OwnerReference>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some([("app.kubernetes.io/part-of".to_owned(), "braid".to_owned())].into()),
            owner_references: owner.map(|o| vec![o.clone()]),
            ..ObjectMeta::default()
        },
        type_: Some(type_.to_owned()),
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v.into_bytes()))).collect()),
        ..Secret::default()
    }
}

/// Whether `secret` carries exactly the owner reference wanted (none wanted counts as yes: the
/// operator never removes references it did not set).
pub fn owned_by(secret: Option<&Secret>, owner: Option<&OwnerReference>) -> bool {
    let (Some(secret), Some(owner)) = (secret, owner) else { return true };
    secret.metadata.owner_references.as_deref() == Some(std::slice::from_ref(owner))
}

/// The value of `key`, when it is there and is text.
pub fn text(secret: Option<&Secret>, key: &str) -> Option<String> {
    let bytes = secret?.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

/// A certificate and its key, when both keys are there.
pub fn keyed(secret: Option<&Secret>, cert: &str, key: &str) -> Option<KeyedCert> {
    Some(KeyedCert { cert_pem: text(secret, cert)?, key_pem: text(secret, key)? })
}

/// A Unix time kept in an annotation (RFC 3339), when it is there and parses.
pub fn annotated_time(secret: Option<&Secret>, annotation: &str) -> Option<i64> {
    secret?
        .metadata
        .annotations
        .as_ref()?
        .get(annotation)?
        .parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .map(|t| t.as_second())
}

/// Sets `annotation` on `secret` to `at` (RFC 3339), when there is a time and it is in range.
pub fn annotate_time(secret: &mut Secret, annotation: &str, at: Option<i64>) {
    if let Some(at) = at.and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok()) {
        secret.metadata.annotations = Some([(annotation.to_owned(), at.to_string())].into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "v1".into(),
            kind: "Service".into(),
            name: "braid-identity".into(),
            uid: uid.into(),
            ..OwnerReference::default()
        }
    }

    #[test]
    fn an_owned_secret_is_rewritten_until_it_has_exactly_that_owner() {
        let data = BTreeMap::from([("tls.crt".to_owned(), "cert".to_owned())]);
        let unowned = object("s", "braid-system", "kubernetes.io/tls", data.clone(), None);
        assert!(owned_by(Some(&unowned), None), "no owner wanted, none checked");
        assert!(owned_by(None, None));
        assert!(!owned_by(Some(&unowned), Some(&owner("uid-1"))));
        let owned = object("s", "braid-system", "kubernetes.io/tls", data, Some(&owner("uid-1")));
        assert!(owned_by(Some(&owned), Some(&owner("uid-1"))));
        assert!(
            !owned_by(Some(&owned), Some(&owner("uid-2"))),
            "a reinstalled chart's Service is a new owner"
        );
    }

    #[test]
    fn secrets_read_back_what_was_written() {
        let data = BTreeMap::from([
            ("tls.crt".to_owned(), "cert".to_owned()),
            ("tls.key".to_owned(), "key".to_owned()),
        ]);
        let mut secret = object("s", "braid-system", "kubernetes.io/tls", data, None);
        assert_eq!(secret.metadata.labels.as_ref().unwrap()["app.kubernetes.io/part-of"], "braid");
        assert_eq!(text(Some(&secret), "tls.crt").as_deref(), Some("cert"));
        assert_eq!(keyed(Some(&secret), "tls.crt", "tls.key").unwrap().key_pem, "key");
        assert_eq!(keyed(Some(&secret), "tls.crt", "ca.key"), None);
        annotate_time(&mut secret, "braid.dev/at", Some(1_800_000_000));
        assert_eq!(secret.metadata.annotations.as_ref().unwrap()["braid.dev/at"], "2027-01-15T08:00:00Z");
        assert_eq!(annotated_time(Some(&secret), "braid.dev/at"), Some(1_800_000_000));
        assert_eq!(annotated_time(Some(&secret), "braid.dev/other"), None);
    }
}
