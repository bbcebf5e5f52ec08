//! `trainer forward`: the noising process on one dataset image.

use std::path::PathBuf;

use crate::flag_rules;
use crate::flags::{dataset_shape, ScheduleFlags};
use anyhow::{bail, Result};
use artifacts::{grid, save_png};
use clap::{ArgMatches, Args};
use datasets::{DatasetSpec, Split};

#[derive(Args)]
pub(crate) struct ForwardArgs {
    /// Dataset (as for `train`).
    #[arg(long, default_value = "mnist10k")]
    dataset: String,
    /// Image index in the training split.
    #[arg(long, default_value_t = 0)]
    index: usize,
    /// Timesteps to show, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "0,100,250,500,999")]
    t: Vec<usize>,
    #[command(flatten)]
    schedule: ScheduleFlags,
    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image size for `folder:` datasets [default: as `train` picks it].
    #[arg(long)]
    image_size: Option<usize>,
    /// Channels for `folder:` datasets [default: as `train` picks them].
    #[arg(long)]
    channels: Option<usize>,
    /// Output PNG strip.
    #[arg(long, default_value = "forward.png")]
    out: PathBuf,
}

pub(crate) fn cmd_forward(a: ForwardArgs, m: &ArgMatches) -> Result<()> {
    flag_rules::dataset_shape(m, &a.dataset)?;
    // The size `train`'s default `mnist` preset would pick (what its levels divide).
    let multiple = diffusion::UNetConfig::mnist().downsampling_factor();
    let mut notes = Vec::new();
    let (size, channels) =
        dataset_shape(&a.dataset, a.image_size, a.channels, multiple, &mut notes)?;
    flag_rules::print_notes(&notes);
    let ds = DatasetSpec::parse(&a.dataset, size, channels)?.load(Split::Train)?;
    if a.index >= ds.len() {
        bail!(
            "--index {} is out of range: {} has {} images",
            a.index,
            ds.name,
            ds.len()
        );
    }
    let s = a.schedule.config(&a.schedule.schedule)?.build()?;
    if let Some(t) = a.t.iter().find(|&&t| t >= a.schedule.timesteps) {
        bail!("--t {t} is out of range 0..={}", a.schedule.timesteps - 1);
    }
    let strip = training::generate::forward_strip(&ds, a.index, &s, &a.t, a.seed);
    let [c, h, w] = ds.image_shape();
    save_png(&a.out, &grid(&strip, [a.t.len(), c, h, w], a.t.len(), 2, 4))?;
    eprintln!("x_t at t = {:?} → {}", a.t, a.out.display());
    Ok(())
}
