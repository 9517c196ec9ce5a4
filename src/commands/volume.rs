//! `volume list|show|create|delete`.

use serde::Serialize;

use super::grammar::VolumeCmd;
use super::{Ctx, Outcome_, Scope, confirm_or_refuse, done, text};
use crate::model::{Name, Size};
use crate::output::{Table, json};
use crate::policy::Action;
use crate::store::{Volume, format_time};

#[derive(Serialize)]
struct VolumeView {
    name: String,
    size: String,
    size_gib: i64,
    created: String,
}

impl From<&Volume> for VolumeView {
    fn from(v: &Volume) -> Self {
        VolumeView {
            name: v.name.clone(),
            size: v.size().to_string(),
            size_gib: v.size_gib,
            created: format_time(v.created_at),
        }
    }
}

pub(super) async fn run(
    ctx: &Ctx<'_>,
    scope: &Scope,
    cmd: &VolumeCmd,
    as_json: bool,
    confirmed: bool,
    what: &str,
) -> Outcome_ {
    match cmd {
        VolumeCmd::List => {
            let pid = ctx.authorize(scope, Action::ViewVolumes, what)?;
            let views: Vec<VolumeView> = ctx
                .store
                .volumes(pid)
                .await?
                .iter()
                .map(VolumeView::from)
                .collect();
            if as_json {
                return text(json(&views));
            }
            let mut t = Table::new(&["NAME", "SIZE", "CREATED"]);
            for v in views {
                t.row(vec![v.name, v.size, v.created]);
            }
            text(t.render())
        }
        VolumeCmd::Show { volume } => {
            let pid = ctx.authorize(scope, Action::ViewVolumes, what)?;
            let name = Name::parse("volume", volume)?;
            let v = VolumeView::from(&ctx.store.volume(pid, &name).await?);
            if as_json {
                return text(json(&v));
            }
            text(format!(
                "name:    {}\nsize:    {}\ncreated: {}\n",
                v.name, v.size, v.created
            ))
        }
        VolumeCmd::Create { volume, size } => {
            let pid = ctx.authorize(scope, Action::CreateVolume, what)?;
            let name = Name::parse("volume", volume)?;
            let size = Size::parse(size)?;
            let v = ctx.store.volume_create(pid, &name, size).await?;
            done(
                format!("created volume {} of {}", v.name, v.size()),
                as_json,
            )
        }
        VolumeCmd::Delete { volume, yes } => {
            let pid = ctx.authorize(scope, Action::DeleteVolume, what)?;
            let name = Name::parse("volume", volume)?;
            let v = ctx.store.volume(pid, &name).await?;
            let question = format!(
                "Delete volume {} ({}) of project {}? Its data is lost.",
                v.name,
                v.size(),
                scope.name
            );
            if let Some(stop) = confirm_or_refuse(ctx, *yes || confirmed, question, what) {
                return stop;
            }
            ctx.store.volume_delete(pid, &name).await?;
            done(format!("deleted volume {name}"), as_json)
        }
    }
}
