//! Whether a front door request may go on, decided afresh for each one.

use hyper::StatusCode;

use super::super::ConnCtx;
use super::super::forward::seen_by;
use crate::kube::request::Identity;
use crate::store::StoredCredential;
use crate::target::{Resolved, Target};

/// What a request may do, decided now.
pub(super) struct Grant {
    pub(super) identity: Identity,
    pub(super) resolved: Resolved,
    pub(super) kube_ca: String,
    pub(super) credential: StoredCredential,
}

/// A request refused before it reached the API server.
pub(super) struct Refusal {
    pub(super) status: StatusCode,
    pub(super) message: String,
}

impl Refusal {
    fn forbidden(message: String) -> Refusal {
        Refusal {
            status: StatusCode::FORBIDDEN,
            message,
        }
    }

    fn unavailable(message: String) -> Refusal {
        Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message,
        }
    }
}

/// Decides afresh whether this session may still use the cluster's API,
/// as whom, and with what: the key and account as they are now, the
/// membership and its role through the policy table, the cluster's
/// address, CA and credential.
pub(super) async fn grant(
    conn: &ConnCtx,
    project: &str,
    cluster_name: &str,
) -> Result<Grant, Refusal> {
    let store = &conn.shared.store;
    let unavailable = |e: crate::store::StoreError| {
        Refusal::unavailable(format!("gatehouse cannot check access ({e})"))
    };
    let account = store
        .account_for_login_key(&conn.account.login, &conn.fingerprint)
        .await
        .map_err(unavailable)?;
    let account = match account {
        Some(a) if a.id == conn.account.id && a.disabled == 0 => a,
        Some(a) if a.disabled != 0 => {
            return Err(Refusal::forbidden(
                "gatehouse: access revoked: the account was disabled".into(),
            ));
        }
        _ => {
            return Err(Refusal::forbidden(
                "gatehouse: access revoked: the key this session used was removed".into(),
            ));
        }
    };
    // One read of what the account sees decides the target, the policy's
    // answer, the role and the cluster's settings alike.
    let (memberships, clusters, nodes) = seen_by(conn)
        .await
        .map_err(|why| Refusal::unavailable(format!("gatehouse {why}")))?;
    let target = Target::Kube {
        cluster: cluster_name.to_string(),
        project: Some(project.to_string()),
    };
    let resolved = target
        .resolve(&memberships, &clusters, &nodes)
        .map_err(|why| Refusal::forbidden(format!("gatehouse: access revoked: {}", why.0)))?;
    let role = memberships
        .iter()
        .find(|m| m.project == project)
        .map(|m| m.role)
        .ok_or_else(|| {
            Refusal::forbidden(format!(
                "gatehouse: access revoked: not a member of project {project}"
            ))
        })?;
    let cluster = clusters
        .into_iter()
        .find(|c| c.project == project && c.name == cluster_name)
        .ok_or_else(|| {
            Refusal::forbidden(format!(
                "gatehouse: access revoked: no cluster {cluster_name} in project {project}"
            ))
        })?;
    let here = format!("-p {}", project);
    // The credential goes only to an address an admin named: the default
    // (the first node's host, port 6443) is a port anyone with a shell
    // on that node could listen on.
    if cluster.kube_api.is_none() {
        return Err(Refusal::unavailable(format!(
            "gatehouse: cluster {} has no kube_api set, and the gateway sends the cluster's credential only to an API server address a project admin set: `cluster config {} kube_api=HOST:PORT {here}`",
            cluster_name, cluster_name
        )));
    }
    let kube_ca = cluster.kube_ca.ok_or_else(|| {
        Refusal::unavailable(format!(
            "gatehouse: cluster {} has no kube_ca, so the API server cannot be verified: a project admin sets it with `cluster config {} kube_ca=$(base64 -w0 ca.crt) {here}`",
            cluster_name, cluster_name
        ))
    })?;
    let credential = store
        .cluster_credential(project, cluster_name)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| {
            Refusal::unavailable(format!(
                "gatehouse: cluster {} has no credential for its API server: a project admin sets it with `cluster credential set {} {here}` (a token or a PEM certificate and key on stdin)",
                cluster_name, cluster_name
            ))
        })?;
    Ok(Grant {
        identity: {
            let mut id = Identity::new(&account.email, project, role, &conn.session_id);
            id.client_ip = conn
                .source
                .parse::<std::net::SocketAddr>()
                .ok()
                .map(|a| a.ip().to_string());
            id
        },
        resolved,
        kube_ca,
        credential,
    })
}
