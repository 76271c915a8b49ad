//! The local cluster has a real node (e2e/cluster/node.sh): kubelet registers it and keeps it
//! Ready, containerd runs the pods, the CNI bridge gives them addresses, kube-proxy routes
//! Services, and CoreDNS resolves NAME.NS.svc.cluster.local. Checked as a user would: a
//! Deployment of the busybox image becomes available, a pod fetches its Service by DNS name, the
//! host fetches its ClusterIP, and `kubectl logs` and `kubectl exec` reach the kubelet.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use braid_e2e::{Cluster, TestNamespace, eventually, http_get, ready_endpoints};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Node, Pod, Service},
};
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use serde_json::json;

/// What node.sh sets up; the names a user sees in `kubectl get nodes -o wide`.
const NODE: &str = "braid-e2e";
const NODE_IP: &str = "10.244.0.1";
const POD_PREFIX: &str = "10.244.0.";
/// Pushed to the node's registry by `make cluster-up`; the node pulls it through the braid.dev mirror.
const IMAGE: &str = "braid.dev/busybox:e2e";

#[tokio::test]
async fn the_node_registers_and_is_ready() {
    let cluster = Cluster::get();
    let client = cluster.client().await;
    let node =
        Api::<Node>::all(client).get_opt(NODE).await.expect("cannot read Nodes").unwrap_or_else(|| {
            panic!("no Node {NODE}: kubelet did not register; see logs/kubelet.log in the state dir")
        });
    let status = node.status.expect("the node has a status");
    let conditions = status.conditions.unwrap_or_default();
    let ready = conditions.iter().find(|c| c.type_ == "Ready").expect("a Ready condition");
    assert_eq!(ready.status, "True", "node {NODE} is not Ready: {ready:?}");
    for pressure in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
        let condition = conditions.iter().find(|c| c.type_ == pressure);
        assert!(condition.is_some_and(|c| c.status == "False"), "{pressure}: {condition:?}");
    }
    let info = status.node_info.expect("nodeInfo");
    assert_eq!(info.kubelet_version, "v1.34.3", "kubelet from the pinned release");
    assert!(
        info.container_runtime_version.starts_with("containerd://1."),
        "{}",
        info.container_runtime_version
    );
    let addresses = status.addresses.unwrap_or_default();
    assert!(
        addresses.iter().any(|a| a.type_ == "InternalIP" && a.address == NODE_IP),
        "InternalIP {NODE_IP} expected: {addresses:?}"
    );
    // Taint-free, so that pods without tolerations schedule on it.
    let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
    assert!(taints.is_empty(), "{taints:?}");

    let wide = cluster.kubectl_ok(&["get", "nodes", "-o", "wide"]);
    println!("$ kubectl get nodes -o wide\n{wide}");
    let row: Vec<&str> =
        wide.lines().find(|l| l.starts_with(NODE)).expect("a row for the node").split_whitespace().collect();
    assert_eq!(row[1], "Ready", "{wide}");
}

#[tokio::test]
async fn a_deployment_runs_and_its_service_routes_by_dns_name_from_pods_and_by_cluster_ip_from_the_host() {
    let cluster = Cluster::get();
    let client = cluster.client().await;
    braid_e2e::registry::Registry::get().require_pushed(IMAGE);
    let ns = TestNamespace::create(cluster, &client, "e2e-node").await;
    let n = ns.name.as_str();

    // busybox httpd, each replica answering with its own name; ready once it serves.
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{
                    "name": "httpd", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", "echo \"hello from $HOSTNAME\" > /www/index.html && exec httpd -f -p 8080 -h /www"],
                    "ports": [{"containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}
                }]}
            }
        }
    }))
    .expect("Deployment object");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), n);
    deployments.create(&PostParams::default(), &deployment).await.expect("create Deployment web");
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}
    }))
    .expect("Service object");
    let service = Api::<Service>::namespaced(client.clone(), n)
        .create(&PostParams::default(), &service)
        .await
        .expect("create Service web");

    let pods: Api<Pod> = Api::namespaced(client.clone(), n);
    let available =
        eventually(Duration::from_secs(90), "Deployment web to have 2 available replicas", || async {
            let status = deployments.get("web").await.ok()?.status?;
            (status.available_replicas == Some(2)).then_some(status)
        })
        .await;
    println!("Deployment web: {available:?}");
    let running = pods.list(&ListParams::default().labels("app=web")).await.expect("list pods");
    let mut names = BTreeSet::new();
    for pod in &running.items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let spec = pod.spec.as_ref().expect("pod spec");
        let status = pod.status.as_ref().expect("pod status");
        assert_eq!(spec.node_name.as_deref(), Some(NODE), "{name} is bound to the node");
        assert_eq!(status.phase.as_deref(), Some("Running"), "{name}");
        let ip = status.pod_ip.as_deref().unwrap_or_default();
        assert!(ip.starts_with(POD_PREFIX), "{name} has pod IP {ip:?}, expected one of the bridge's range");
        names.insert(name);
    }
    assert_eq!(names.len(), 2, "{running:?}");
    eventually(Duration::from_secs(30), "an EndpointSlice with the 2 ready replicas", || async {
        (ready_endpoints(&client, n, "web").await?.len() == 2).then_some(())
    })
    .await;

    // kube-proxy writes the Service's rules a sync after the EndpointSlice says the replicas are
    // ready, and later still on a loaded machine: from the host, both replicas answer through the
    // ClusterIP before the pod below counts on it.
    let cluster_ip: Ipv4Addr = service
        .spec
        .as_ref()
        .and_then(|spec| spec.cluster_ip.clone())
        .expect("a ClusterIP")
        .parse()
        .expect("an IPv4 ClusterIP");
    let addr = SocketAddr::from((cluster_ip, 80));
    eventually(Duration::from_secs(30), "kube-proxy to send to both replicas of web", || async {
        let answered: BTreeSet<String> = (0..20)
            .filter_map(|_| http_get(addr, "/"))
            .filter(|(code, _)| *code == 200)
            .filter_map(|(_, body)| body.trim().strip_prefix("hello from ").map(str::to_owned))
            .collect();
        (answered == names).then_some(())
    })
    .await;

    // From another pod, by DNS name through the Service (CoreDNS, then kube-proxy's rules), 20
    // times so that both replicas answer; and the API server through the "kubernetes" Service, as
    // an in-cluster client (the operator in a pod) reaches it. Not as root, as most images run:
    // its root directory, /etc/resolv.conf and /etc/hosts must be readable to it. busybox wget's
    // -T crashes, hence timeout(1).
    let url = format!("http://web.{n}.svc.cluster.local/");
    let script = format!(
        "for i in $(seq 1 20); do timeout 10 wget -q -O - {url} || exit 1; done; \
         echo \"api: $(timeout 10 wget -q -O - --no-check-certificate https://kubernetes.default.svc/livez)\""
    );
    let client_pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "client"},
        "spec": {"restartPolicy": "Never", "securityContext": {"runAsUser": 65534, "runAsGroup": 65534},
                 "containers": [{
            "name": "wget", "image": IMAGE, "imagePullPolicy": "IfNotPresent", "command": ["sh", "-c", script]
        }]}
    }))
    .expect("Pod object");
    pods.create(&PostParams::default(), &client_pod).await.expect("create pod client");
    let phase = eventually(Duration::from_secs(90), "pod client to finish", || async {
        let phase = pods.get("client").await.ok()?.status?.phase?;
        matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
    })
    .await;
    // `kubectl logs` goes through the API server to the kubelet.
    let logs = cluster.kubectl_ok(&["logs", "-n", n, "client"]);
    println!("$ kubectl logs client\n{logs}");
    assert_eq!(phase, "Succeeded", "the client pod failed; its log:\n{logs}");
    let answers: Vec<&str> = logs.lines().filter(|l| l.starts_with("hello from ")).collect();
    assert_eq!(answers.len(), 20, "20 answers expected:\n{logs}");
    let answered: BTreeSet<String> = answers.iter().map(|l| l["hello from ".len()..].to_owned()).collect();
    assert_eq!(answered, names, "both replicas answer through the Service");
    assert!(
        logs.lines().any(|l| l == "api: ok"),
        "the API server's /livez through kubernetes.default.svc:\n{logs}"
    );

    // From the host, the ClusterIP answers too (kube-proxy's rules apply to local traffic).
    let (code, body) =
        http_get(addr, "/").unwrap_or_else(|| panic!("nothing answers on {addr} from the host"));
    assert_eq!(code, 200, "{body}");
    assert!(names.iter().any(|name| body.trim() == format!("hello from {name}")), "{body}");

    // `kubectl exec` streams through the kubelet into the container.
    let pod_name = names.first().expect("a replica");
    let page = cluster.kubectl_ok(&["exec", "-n", n, pod_name, "--", "cat", "/www/index.html"]);
    assert_eq!(page.trim(), format!("hello from {pod_name}"));
}
