//! The grammar of the SSH command language (interface.md §4), as clap
//! derive types. Values stay strings here; validation into model types
//! happens in the command files so their messages are ours.

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "",
    no_binary_name = true,
    disable_version_flag = true,
    disable_colored_help = true,
    color = clap::ColorChoice::Never,
    override_usage = "COMMAND [ARGS...] [--project NAME] [--json]",
    about = "gatehouse: the SSH gateway of your GPU cluster projects",
    after_help = "Options go after the command word, as in `ssh gw cluster list -p train --json`: \
the ssh client takes options that come before it. `ssh gw -- -p train cluster list` works too.\n\
Run `help COMMAND` for a command's options."
)]
pub struct Invocation {
    /// Project to act in; may be left out when you belong to exactly one
    #[arg(short = 'p', long, global = true, value_name = "NAME")]
    pub project: Option<String>,
    /// Machine output: one JSON document on stdout
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Your login, email, projects and roles
    Whoami,
    /// Projects you belong to
    #[command(subcommand)]
    Project(ProjectCmd),
    /// Clusters: list, show, create, delete, scale, config
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Nodes of the project's clusters
    #[command(subcommand)]
    Node(NodeCmd),
    /// Storage volumes: list, show, create, delete
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Project members: list, add, remove, role
    #[command(subcommand)]
    Member(MemberCmd),
    /// Your own SSH keys: list, add, remove
    #[command(subcommand)]
    Key(KeyCmd),
    /// Print a kubeconfig that reaches CLUSTER through `ssh -D` (or `ssh -L`)
    Kubeconfig(KubeconfigArgs),
    /// Live sessions on this gateway: list, kill
    #[command(subcommand)]
    Session(SessionCmd),
    /// The project's audit events, newest first (admin)
    Audit {
        #[arg(
            long,
            value_name = "N",
            default_value = "50",
            allow_hyphen_values = true
        )]
        limit: String,
    },
    /// Interactive shell: make PROJECT the current project
    Use { project: String },
    /// Interactive shell: leave
    #[command(alias = "quit")]
    Exit,
}

#[derive(Debug, Subcommand)]
pub enum ProjectCmd {
    /// Projects you belong to, with your role
    List,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Clusters of the project
    List,
    /// One cluster, its config and nodes
    Show { cluster: String },
    /// Create a cluster from free nodes (admin)
    Create {
        cluster: String,
        #[arg(long, value_name = "N", required = true, allow_hyphen_values = true)]
        nodes: String,
        #[arg(long, value_name = "TYPE")]
        gpu_type: Option<String>,
    },
    /// Delete a cluster, returning its nodes to the pool (admin)
    Delete {
        cluster: String,
        /// Do not ask for confirmation
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Grow or shrink a cluster to N nodes (admin); shrinking asks first
    /// when it would end open forwards
    Scale {
        cluster: String,
        #[arg(long, value_name = "N", required = true, allow_hyphen_values = true)]
        nodes: String,
        /// Do not ask for confirmation
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Show the cluster config; with KEY=VALUE, change it (admin)
    #[command(after_help = "Keys:\n  \
description=TEXT    what the cluster is for (256 characters)\n  \
kube_api=HOST:PORT  the Kubernetes API server (default: the first node's host, port 6443);\n                      \
a host of the cluster's nodes, or inside the operator's forwarding.api_allow\n  \
dashboard=HOST:PORT the Kubernetes dashboard, held to the same rule\n  \
node_user=LOGIN     the Unix login members share on the nodes (default ubuntu)\n  \
kube_ca=BASE64      the API server's CA certificate (base64 -w0 ca.crt)\n\
KEY= clears a key (node_user= goes back to ubuntu).")]
    Config {
        cluster: String,
        #[arg(value_name = "KEY=VALUE")]
        settings: Vec<String>,
    },
    /// The cluster's own Kubernetes credential (admin; write-only)
    #[command(subcommand)]
    Credential(CredentialCmd),
}

#[derive(Debug, Subcommand)]
pub enum CredentialCmd {
    /// Set the credential the gateway uses towards the cluster's API server:
    /// a bearer token, or a PEM client certificate and its key, on stdin
    #[command(
        after_help = "The gateway impersonates each user with it (see the README's Kubernetes section). \
It is never shown again: `cluster show` says only since when it is set.\n\
Example: kubectl -n kube-system get secret gatehouse-token -o jsonpath='{.data.token}' | base64 -d | ssh gw cluster credential set CLUSTER"
    )]
    Set { cluster: String },
    /// Remove the credential; kube requests then fail until one is set
    Clear { cluster: String },
}

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Nodes of the project's clusters, or of one cluster
    List { cluster: Option<String> },
}

#[derive(Debug, Subcommand)]
pub enum VolumeCmd {
    /// Volumes of the project
    List,
    /// One volume
    Show { volume: String },
    /// Create a volume (admin); SIZE like 500GiB or 2TiB
    Create {
        volume: String,
        #[arg(long, value_name = "SIZE", required = true, allow_hyphen_values = true)]
        size: String,
    },
    /// Delete a volume (admin)
    Delete {
        volume: String,
        /// Do not ask for confirmation
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum MemberCmd {
    /// Members of the project and their roles
    List,
    /// Add an account, by email, to the project (admin)
    Add {
        email: String,
        #[arg(long, value_name = "member|admin", default_value = "member")]
        role: String,
    },
    /// Remove a member from the project (admin)
    Remove {
        email: String,
        /// Do not ask for confirmation
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Set a member's role (admin)
    Role {
        email: String,
        #[arg(value_name = "admin|member")]
        role: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Your SSH keys
    List,
    /// Add a public key: give the line as arguments, or on stdin
    Add {
        #[arg(
            value_name = "PUBLIC-KEY",
            trailing_var_arg = true,
            allow_hyphen_values = true
        )]
        key: Vec<String>,
    },
    /// Remove one of your keys by fingerprint
    Remove { fingerprint: String },
}

#[derive(Debug, Args)]
pub struct KubeconfigArgs {
    pub cluster: String,
    /// Local port of your `ssh -D` SOCKS proxy
    #[arg(long, value_name = "N", default_value = "1080")]
    pub socks_port: String,
    /// Instead of SOCKS: the local port of `ssh -L N:kube.CLUSTER.PROJECT:443`
    #[arg(long, value_name = "N", conflicts_with = "socks_port")]
    pub local_port: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum SessionCmd {
    /// Live sessions (admin: the project's; member: your own)
    List,
    /// End a session (admin)
    Kill { id: String },
}

/// First words for Tab completion in the shell, and second words after them.
pub fn completions(words_before: &[&str]) -> Vec<String> {
    use clap::CommandFactory;
    let mut cmd = Invocation::command();
    for w in words_before {
        match cmd.find_subcommand(w) {
            Some(sub) => cmd = sub.clone(),
            None => return Vec::new(),
        }
    }
    let mut out: Vec<String> = cmd
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    if words_before.is_empty() {
        out.push("help".into());
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn grammar_is_consistent() {
        Invocation::command().debug_assert();
    }

    #[test]
    fn completion_words() {
        assert!(completions(&[]).contains(&"cluster".to_string()));
        assert_eq!(
            completions(&["volume"]),
            ["create", "delete", "list", "show"]
        );
        assert!(completions(&["nope"]).is_empty());
    }
}
