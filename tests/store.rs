//! The store suite, run against SQLite and against a real PostgreSQL.

mod common;

use gatehouse::model::{Email, HostPort, Login, Name, Role, Size, SshPublicKey};
use gatehouse::store::{Revocation, Store, StoreError};

const ED1: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl one";
const ED2: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBXrvvoUV2CNfoPsaCTLn4cUa3K1Xm66i3XEeOWCwEfl two";

fn email(s: &str) -> Email {
    Email::parse(s).unwrap()
}
fn name(s: &str) -> Name {
    Name::parse("x", s).unwrap()
}

async fn suite(store: Store) {
    // Accounts: email unique case-insensitively, login unique.
    let alice = store
        .account_add(&email("Alice@Example.com"), &Login::parse("alice").unwrap())
        .await
        .unwrap();
    let e = store
        .account_add(
            &email("alice@EXAMPLE.com"),
            &Login::parse("alice2").unwrap(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::Conflict(m) if m.contains("already exists")),
        "{e}"
    );
    let e = store
        .account_add(&email("other@example.com"), &Login::parse("alice").unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::Conflict(m) if m.contains("login alice")),
        "{e}"
    );
    assert_eq!(store.accounts().await.unwrap().len(), 1);
    let bob = store
        .account_add(&email("bob@example.com"), &Login::parse("bob").unwrap())
        .await
        .unwrap();

    // Keys: unique across all accounts.
    let k1 = SshPublicKey::parse(ED1).unwrap();
    store.key_add(&alice, &k1).await.unwrap();
    assert!(matches!(
        store.key_add(&bob, &k1).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.key_add(&alice, &k1).await,
        Err(StoreError::Conflict(_))
    ));
    let found = store
        .account_for_login_key("alice", k1.fingerprint())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, alice.id);
    assert!(
        store
            .account_for_login_key("bob", k1.fingerprint())
            .await
            .unwrap()
            .is_none()
    );

    // Projects and the add-member rules of the seed.
    let p = store
        .project_create(&name("train"), alice.id)
        .await
        .unwrap();
    assert!(matches!(
        store.project_create(&name("train"), alice.id).await,
        Err(StoreError::Conflict(_))
    ));
    let e = store.member_add(p, bob.id, Role::Member).await.unwrap_err();
    assert!(e.to_string().contains("has no SSH key registered"), "{e}");
    assert_eq!(store.members(p).await.unwrap().len(), 1, "nobody was added");
    store
        .key_add(&bob, &SshPublicKey::parse(ED2).unwrap())
        .await
        .unwrap();
    store.member_add(p, bob.id, Role::Member).await.unwrap();
    assert!(matches!(
        store.member_add(p, bob.id, Role::Member).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store
            .membership(bob.id, "train")
            .await
            .unwrap()
            .unwrap()
            .role,
        Role::Member
    );
    assert!(store.membership(bob.id, "nope").await.unwrap().is_none());

    // The last admin stays.
    let e = store
        .member_set_role(p, alice.id, "alice", Role::Member)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("last admin"), "{e}");
    let e = store
        .member_remove(p, "train", alice.id, "alice")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("last admin"), "{e}");
    store
        .member_set_role(p, bob.id, "bob", Role::Admin)
        .await
        .unwrap();
    store
        .member_set_role(p, alice.id, "alice", Role::Member)
        .await
        .unwrap();
    store
        .member_set_role(p, alice.id, "alice", Role::Admin)
        .await
        .unwrap();

    // Nodes, clusters from the pool, scaling, capacity.
    for (i, gpu) in [(1, "h100"), (2, "h100"), (3, "a100")] {
        let hp = HostPort::parse(&format!("10.0.0.{i}:22")).unwrap();
        store
            .node_register(&name(&format!("n{i}")), &hp, Some(gpu), 8)
            .await
            .unwrap();
    }
    assert!(matches!(
        store
            .node_register(
                &name("n1"),
                &HostPort::parse("10.0.0.9:22").unwrap(),
                None,
                0
            )
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .node_register(
                &name("n9"),
                &HostPort::parse("10.0.0.1:22").unwrap(),
                None,
                0
            )
            .await,
        Err(StoreError::Conflict(_))
    ));
    let e = store
        .cluster_create(p, &name("big"), 3, Some("h100"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("2 free"), "{e}");
    assert!(
        store.clusters(p).await.unwrap().is_empty(),
        "a failed create leaves nothing"
    );
    let c = store
        .cluster_create(p, &name("c1"), 2, Some("h100"))
        .await
        .unwrap();
    assert_eq!(store.nodes_of_cluster(c.id).await.unwrap().len(), 2);
    assert!(matches!(
        store.cluster_create(p, &name("c1"), 1, None).await,
        Err(StoreError::Conflict(_))
    ));
    let removed = store.cluster_scale(p, &name("c1"), 1).await.unwrap();
    assert_eq!(removed.len(), 1);
    assert!(
        store.cluster_scale(p, &name("c1"), 3).await.is_err(),
        "only one h100 free"
    );
    store.cluster_scale(p, &name("c1"), 2).await.unwrap();

    // The cluster credential: set, replaced, read only as a whole, cleared,
    // and gone with its cluster.
    use gatehouse::store::ClusterCredential;
    assert!(
        store
            .cluster_credential("train", "c1")
            .await
            .unwrap()
            .is_none()
    );
    let token = ClusterCredential::Token("tok-1".into());
    store
        .cluster_credential_set(&c, &token, "alice")
        .await
        .unwrap();
    let again = ClusterCredential::Token("tok-2".into());
    store
        .cluster_credential_set(&c, &again, "alice")
        .await
        .unwrap();
    let got = store
        .cluster_credential("train", "c1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.credential, again);
    let shown = store.cluster(p, &name("c1")).await.unwrap();
    assert_eq!(shown.credential_set_at, Some(got.set_at));
    // Set only for the API server it was read with: once kube_ca changed
    // (which cleared it), a set from the stale read is refused.
    use gatehouse::store::ClusterConfigChange;
    store
        .cluster_configure(&c, &[ClusterConfigChange::KubeCa(Some("Q0E=".into()))])
        .await
        .unwrap();
    assert!(matches!(
        store.cluster_credential_set(&c, &token, "alice").await,
        Err(StoreError::Conflict(_))
    ));
    assert!(
        store
            .cluster_credential("train", "c1")
            .await
            .unwrap()
            .is_none()
    );
    let c = store.cluster(p, &name("c1")).await.unwrap();
    store
        .cluster_credential_set(&c, &again, "alice")
        .await
        .unwrap();
    store.cluster_credential_clear(c.id, "c1").await.unwrap();
    assert!(matches!(
        store.cluster_credential_clear(c.id, "c1").await,
        Err(StoreError::NotFound(_))
    ));
    store
        .cluster_credential_set(&c, &token, "alice")
        .await
        .unwrap();

    let freed = store.cluster_delete(p, &name("c1")).await.unwrap();
    assert!(
        store
            .cluster_credential("train", "c1")
            .await
            .unwrap()
            .is_none(),
        "the credential went with its cluster"
    );
    assert_eq!(freed.len(), 2);
    assert!(
        store
            .nodes()
            .await
            .unwrap()
            .iter()
            .all(|n| n.cluster.is_none())
    );

    // Volumes.
    store
        .volume_create(p, &name("data"), Size::parse("2TiB").unwrap())
        .await
        .unwrap();
    assert!(matches!(
        store
            .volume_create(p, &name("data"), Size::parse("1GiB").unwrap())
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.volume(p, &name("data")).await.unwrap().size_gib, 2048);
    store.volume_delete(p, &name("data")).await.unwrap();
    assert!(matches!(
        store.volume_delete(p, &name("data")).await,
        Err(StoreError::NotFound(_))
    ));

    // The revocation feed sees removals, deletions and disables, in order.
    let head = store.revocation_head().await.unwrap();
    store
        .member_remove(p, "train", bob.id, "bob")
        .await
        .unwrap();
    store
        .account_disable(&email("bob@example.com"))
        .await
        .unwrap();
    let feed = store.revocations_after(head).await.unwrap();
    assert_eq!(
        feed.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(),
        vec![
            Revocation::Membership {
                account_id: bob.id,
                project: "train".into()
            },
            Revocation::Account { account_id: bob.id },
        ]
    );

    // Audit.
    let ev = gatehouse::audit::Event {
        actor: "alice".into(),
        source: "cli".into(),
        project: Some("train".into()),
        action: "test".into(),
        target: "t".into(),
        args: String::new(),
        outcome: gatehouse::audit::Outcome::Ok,
        detail: "d".into(),
    };
    store.audit(&ev).await.unwrap();
    assert_eq!(
        store.audit_events(Some("train"), 10).await.unwrap().len(),
        1
    );
    assert!(
        store
            .audit_events(Some("other"), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Many writers adding the same email at once: exactly one wins, the rest
/// get a clear conflict.
async fn race(store: Store) {
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .account_add(
                    &email("Race@Example.com"),
                    &Login::parse(&format!("race{i}")).unwrap(),
                )
                .await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(StoreError::Conflict(m)) => assert!(m.contains("already exists"), "{m}"),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(wins, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_suite_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/g.db", dir.path().display());
    suite(Store::connect(&url, 4).await.unwrap()).await;
    let url = format!("sqlite://{}/race.db", dir.path().display());
    race(Store::connect(&url, 8).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_suite_on_postgres() {
    let Some(pg) = common::Postgres::start() else {
        return;
    };
    suite(Store::connect(&pg.database(), 4).await.unwrap()).await;
    race(Store::connect(&pg.database(), 8).await.unwrap()).await;
}

#[tokio::test]
async fn schema_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/g.db", dir.path().display());
    drop(Store::connect(&url, 1).await.unwrap());
    let again = Store::connect(&url, 1).await.unwrap();
    again.ping().await.unwrap();
}
