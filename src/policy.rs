//! Who may do what: the one permission table of `shared/spec/permissions.md`.
//! Every permission decision in gatehouse is a call to [`authorize`].

use serde::Serialize;

use crate::model::Role;

/// Everything a person can ask for inside a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    ViewClusters,
    ViewVolumes,
    ViewClusterConfig,
    ViewMembers,
    CreateCluster,
    DeleteCluster,
    CreateVolume,
    DeleteVolume,
    ModifyClusterConfig,
    ScaleCluster,
    SshToNodes,
    AccessDashboard,
    UseKubernetes,
    AddMember,
    RemoveMember,
    AssignRole,
    ViewAudit,
    ListOwnSessions,
    ListAllSessions,
    KillSession,
}

/// One row of the table: the action, whether admins and members may do it,
/// and the words of permissions.md it comes from.
pub struct Rule {
    pub action: Action,
    pub admin: bool,
    pub member: bool,
    pub seed: &'static str,
}

const fn rule(action: Action, admin: bool, member: bool, seed: &'static str) -> Rule {
    Rule {
        action,
        admin,
        member,
        seed,
    }
}

/// The table, row for row as in permissions.md. Members use the data plane
/// fully and see the control plane read-only; admins do everything.
pub const TABLE: &[Rule] = &[
    rule(Action::ViewClusters, true, true, "view clusters"),
    rule(Action::ViewVolumes, true, true, "view storage volumes"),
    rule(
        Action::ViewClusterConfig,
        true,
        true,
        "view cluster configurations",
    ),
    rule(Action::ViewMembers, true, true, "view members"),
    rule(Action::CreateCluster, true, false, "create clusters"),
    rule(Action::DeleteCluster, true, false, "delete clusters"),
    rule(Action::CreateVolume, true, false, "create storage volumes"),
    rule(Action::DeleteVolume, true, false, "delete storage volumes"),
    rule(
        Action::ModifyClusterConfig,
        true,
        false,
        "modify cluster configurations",
    ),
    // The seed's summary says members can "scale nodes"; its detailed list,
    // which permissions.md follows, says they cannot.
    rule(
        Action::ScaleCluster,
        true,
        false,
        "scale the cluster's nodes up or down",
    ),
    rule(Action::SshToNodes, true, true, "SSH into cluster nodes"),
    rule(
        Action::AccessDashboard,
        true,
        true,
        "access the Kubernetes dashboard",
    ),
    rule(
        Action::UseKubernetes,
        true,
        true,
        "execute kubectl commands, deploy pods, manage resources",
    ),
    rule(Action::AddMember, true, false, "add members to the project"),
    rule(
        Action::RemoveMember,
        true,
        false,
        "remove members from the project",
    ),
    rule(Action::AssignRole, true, false, "assign user roles"),
    rule(
        Action::ViewAudit,
        true,
        false,
        "see the project's audit log",
    ),
    rule(
        Action::ListOwnSessions,
        true,
        true,
        "list one's own sessions",
    ),
    rule(
        Action::ListAllSessions,
        true,
        false,
        "list others' sessions",
    ),
    rule(Action::KillSession, true, false, "end others' sessions"),
];

/// The answer of [`authorize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// A member asked for an admin's action.
    DenyRole,
    /// Not a member, or no such project: deliberately indistinguishable.
    DenyNotMember,
}

impl Decision {
    pub fn allowed(self) -> bool {
        self == Decision::Allow
    }
}

/// Decides whether someone with `role` in a project (`None`: not a member, or
/// no such project) may take `action` there.
pub fn authorize(role: Option<Role>, action: Action) -> Decision {
    let Some(role) = role else {
        return Decision::DenyNotMember;
    };
    let allowed = TABLE
        .iter()
        .find(|r| r.action == action)
        .is_some_and(|r| match role {
            Role::Admin => r.admin,
            Role::Member => r.member,
        });
    if allowed {
        Decision::Allow
    } else {
        Decision::DenyRole
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;

    /// permissions.md, transcribed independently of TABLE: (action, admin, member).
    const SPEC: &[(Action, bool, bool)] = &[
        (ViewClusters, true, true),
        (ViewVolumes, true, true),
        (ViewClusterConfig, true, true),
        (ViewMembers, true, true),
        (CreateCluster, true, false),
        (DeleteCluster, true, false),
        (CreateVolume, true, false),
        (DeleteVolume, true, false),
        (ModifyClusterConfig, true, false),
        (ScaleCluster, true, false),
        (SshToNodes, true, true),
        (AccessDashboard, true, true),
        (UseKubernetes, true, true),
        (AddMember, true, false),
        (RemoveMember, true, false),
        (AssignRole, true, false),
        (ViewAudit, true, false),
        (ListOwnSessions, true, true),
        (ListAllSessions, true, false),
        (KillSession, true, false),
    ];

    #[test]
    fn every_role_action_pair_matches_the_spec() {
        assert_eq!(SPEC.len(), TABLE.len(), "every action has exactly one row");
        for &(action, admin, member) in SPEC {
            assert_eq!(
                authorize(Some(Role::Admin), action).allowed(),
                admin,
                "admin {action:?}"
            );
            assert_eq!(
                authorize(Some(Role::Member), action).allowed(),
                member,
                "member {action:?}"
            );
            if !member {
                assert_eq!(authorize(Some(Role::Member), action), Decision::DenyRole);
            }
        }
    }

    #[test]
    fn non_member_is_denied_everything() {
        for &(action, _, _) in SPEC {
            assert_eq!(
                authorize(None, action),
                Decision::DenyNotMember,
                "{action:?}"
            );
        }
    }

    #[test]
    fn members_cannot_scale_or_change_infrastructure() {
        for a in [
            CreateCluster,
            DeleteCluster,
            CreateVolume,
            DeleteVolume,
            ModifyClusterConfig,
            ScaleCluster,
            AddMember,
            RemoveMember,
            AssignRole,
        ] {
            assert_eq!(
                authorize(Some(Role::Member), a),
                Decision::DenyRole,
                "{a:?}"
            );
        }
    }

    #[test]
    fn members_have_the_whole_data_plane() {
        for a in [SshToNodes, AccessDashboard, UseKubernetes] {
            assert!(authorize(Some(Role::Member), a).allowed(), "{a:?}");
        }
    }

    #[test]
    fn table_has_no_duplicate_rows() {
        for (i, r) in TABLE.iter().enumerate() {
            assert!(
                TABLE[i + 1..].iter().all(|o| o.action != r.action),
                "{:?}",
                r.action
            );
            assert!(!r.seed.is_empty());
        }
    }
}
