//! Who a token belongs to. The API server's TokenReview checks the signature, expiry and
//! audience; but it caches a successful review for about ten seconds, so a token whose pod or
//! ServiceAccount was just deleted would still pass. The operator therefore also looks both up
//! and compares their UIDs with the ones the review reported.

use braid_api::contract::TOKEN_AUDIENCE;
use futures::future::BoxFuture;
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus},
    core::v1::{Pod, ServiceAccount},
};
use kube::{Api, Client, api::PostParams};

use super::csr::service_account_of;

const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// The workload a token proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    pub service_account: String,
    pub service_account_uid: Option<String>,
    pub pod_name: String,
    pub pod_uid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// 401 `unauthenticated`.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403 `identity-gone`.
    #[error("{0}")]
    Gone(String),
    /// 503 `unavailable`: the API server could not be asked.
    #[error("cannot check the token with the Kubernetes API: {0}")]
    Unavailable(String),
}

/// Checks a token; a trait so the endpoint's tests run without an API server.
pub trait Verifier: Send + Sync + 'static {
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Workload, AuthError>>;
}

/// What a TokenReview answer says about the token, or why it is refused.
pub fn reviewed(status: Option<&TokenReviewStatus>) -> Result<Workload, AuthError> {
    let status = status
        .ok_or_else(|| AuthError::Unavailable("the TokenReview came back without a status".to_owned()))?;
    if status.authenticated != Some(true) {
        let why = status.error.as_deref().filter(|e| !e.is_empty()).unwrap_or("no reason given");
        return Err(AuthError::Unauthenticated(format!("the API server refused the token: {why}")));
    }
    // The API server answers with the audiences the token is valid for among those asked; an
    // authenticator that ignores audiences would answer none, and that is not good enough.
    if !status.audiences.as_ref().is_some_and(|a| a.iter().any(|a| a == TOKEN_AUDIENCE)) {
        return Err(AuthError::Unauthenticated(format!("the token is not for audience {TOKEN_AUDIENCE:?}")));
    }
    let user = status
        .user
        .as_ref()
        .ok_or_else(|| AuthError::Unauthenticated("the token names no user".to_owned()))?;
    let username = user.username.as_deref().unwrap_or_default();
    let (namespace, service_account) = service_account_of(username).ok_or_else(|| {
        AuthError::Unauthenticated(format!("the token is not a ServiceAccount token (user {username:?})"))
    })?;
    let extra = |key: &str| user.extra.as_ref()?.get(key)?.first().filter(|v| !v.is_empty()).cloned();
    let (Some(pod_name), Some(pod_uid)) = (extra(POD_NAME), extra(POD_UID)) else {
        return Err(AuthError::Unauthenticated(format!(
            "the token is not bound to a pod; mount a projected ServiceAccount token with audience {TOKEN_AUDIENCE:?}"
        )));
    };
    Ok(Workload {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        service_account_uid: user.uid.clone().filter(|uid| !uid.is_empty()),
        pod_name,
        pod_uid,
    })
}

/// Whether the pod and ServiceAccount the token was issued for still exist (the UIDs they have
/// now, None when they are gone).
pub fn still_exists(
    workload: &Workload,
    pod_uid: Option<&str>,
    service_account_uid: Option<&str>,
) -> Result<(), AuthError> {
    let pod = format!("{}/{}", workload.namespace, workload.pod_name);
    match pod_uid {
        None => return Err(AuthError::Gone(format!("pod {pod} no longer exists"))),
        Some(uid) if uid != workload.pod_uid => {
            return Err(AuthError::Gone(format!(
                "pod {pod} was deleted and recreated (uid {uid}; the token is for {})",
                workload.pod_uid
            )));
        }
        Some(_) => {}
    }
    let account = format!("{}/{}", workload.namespace, workload.service_account);
    match (service_account_uid, &workload.service_account_uid) {
        (None, _) => Err(AuthError::Gone(format!("service account {account} no longer exists"))),
        (Some(now), Some(then)) if now != then => Err(AuthError::Gone(format!(
            "service account {account} was deleted and recreated (uid {now}; the token is for {then})"
        ))),
        _ => Ok(()),
    }
}

/// TokenReview, then the pod and the ServiceAccount, on the real API server.
#[derive(Clone)]
pub struct KubeVerifier {
    client: Client,
}

impl KubeVerifier {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    async fn check(&self, token: &str) -> Result<Workload, AuthError> {
        let unavailable = |err: kube::Error| AuthError::Unavailable(err.to_string());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![TOKEN_AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let reviews: Api<TokenReview> = Api::all(self.client.clone());
        let answer = reviews.create(&PostParams::default(), &review).await.map_err(unavailable)?;
        let workload = reviewed(answer.status.as_ref())?;

        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &workload.namespace);
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &workload.namespace);
        let (pod, account) = tokio::join!(
            pods.get_metadata_opt(&workload.pod_name),
            accounts.get_metadata_opt(&workload.service_account)
        );
        let pod_uid = pod.map_err(unavailable)?.and_then(|p| p.metadata.uid);
        let account_uid = account.map_err(unavailable)?.and_then(|a| a.metadata.uid);
        still_exists(&workload, pod_uid.as_deref(), account_uid.as_deref())?;
        Ok(workload)
    }
}

impl Verifier for KubeVerifier {
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Workload, AuthError>> {
        Box::pin(self.check(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;

    fn status(username: &str, extra: &[(&str, &str)], audiences: &[&str]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(audiences.iter().map(|a| (*a).to_owned()).collect()),
            user: Some(UserInfo {
                username: Some(username.to_owned()),
                uid: Some("sa-uid".to_owned()),
                extra: Some(extra.iter().map(|(k, v)| ((*k).to_owned(), vec![(*v).to_owned()])).collect()),
                ..UserInfo::default()
            }),
            error: None,
        }
    }

    const BOUND: &[(&str, &str)] = &[(POD_NAME, "web-1"), (POD_UID, "pod-uid")];

    #[test]
    fn a_bound_service_account_token_names_its_workload() {
        let workload = reviewed(Some(&status("system:serviceaccount:shop:web", BOUND, &["braid"]))).unwrap();
        assert_eq!(
            workload,
            Workload {
                namespace: "shop".into(),
                service_account: "web".into(),
                service_account_uid: Some("sa-uid".into()),
                pod_name: "web-1".into(),
                pod_uid: "pod-uid".into(),
            }
        );
        assert_eq!(still_exists(&workload, Some("pod-uid"), Some("sa-uid")), Ok(()));
    }

    #[test]
    fn refusals_say_why() {
        let refused = TokenReviewStatus {
            authenticated: Some(false),
            error: Some("token has expired".into()),
            ..TokenReviewStatus::default()
        };
        let err = reviewed(Some(&refused)).unwrap_err();
        assert_eq!(
            err,
            AuthError::Unauthenticated("the API server refused the token: token has expired".into())
        );
        let other_audience =
            reviewed(Some(&status("system:serviceaccount:shop:web", BOUND, &[]))).unwrap_err();
        assert!(other_audience.to_string().contains("audience"), "{other_audience}");
        let user = reviewed(Some(&status("alice", BOUND, &["braid"]))).unwrap_err();
        assert!(matches!(user, AuthError::Unauthenticated(m) if m.contains("not a ServiceAccount token")));
        let unbound = reviewed(Some(&status("system:serviceaccount:shop:web", &[], &["braid"]))).unwrap_err();
        assert!(matches!(unbound, AuthError::Unauthenticated(m) if m.contains("not bound to a pod")));
        assert!(matches!(reviewed(None), Err(AuthError::Unavailable(_))));
    }

    #[test]
    fn a_deleted_or_recreated_pod_or_account_is_gone() {
        let workload = reviewed(Some(&status("system:serviceaccount:shop:web", BOUND, &["braid"]))).unwrap();
        let gone = |pod, sa| still_exists(&workload, pod, sa).unwrap_err().to_string();
        assert_eq!(gone(None, Some("sa-uid")), "pod shop/web-1 no longer exists");
        assert!(gone(Some("other"), Some("sa-uid")).contains("deleted and recreated"));
        assert_eq!(gone(Some("pod-uid"), None), "service account shop/web no longer exists");
        assert!(
            gone(Some("pod-uid"), Some("new")).contains("service account shop/web was deleted and recreated")
        );
    }
}
