//! `trainer devices`: the backends compiled into this build and the devices each can see.

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub(crate) struct DevicesArgs {
    /// Print JSON (one object per backend) instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn cmd_devices(a: DevicesArgs) -> Result<()> {
    let backends = training::device::list_backends();
    if a.json {
        let list: Vec<serde_json::Value> = backends
            .iter()
            .map(|b| {
                serde_json::json!({
                    "backend": b.name,
                    "description": b.description,
                    "devices": b.devices.iter()
                        .map(|(name, what)| serde_json::json!({"device": name, "description": what}))
                        .collect::<Vec<_>>(),
                    "unavailable": b.unavailable,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    for b in &backends {
        println!("{}: {}", b.name, b.description);
        for (name, what) in &b.devices {
            println!("  --device {name}  {what}");
        }
        if let Some(why) = &b.unavailable {
            println!("  no usable device: {why}");
        }
    }
    for missing in ["wgpu", "cuda"] {
        if !backends.iter().any(|b| b.name == missing) {
            println!("{missing}: not compiled in (build with `--features {missing}`)");
        }
    }
    Ok(())
}
