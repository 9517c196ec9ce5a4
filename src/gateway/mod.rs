//! The SSH server (placeholder until the front door lands).

pub async fn serve(_config: crate::config::Config) -> anyhow::Result<()> {
    anyhow::bail!("serve is not built yet")
}
