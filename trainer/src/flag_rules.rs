//! Which flags apply to which mode: a flag given where it has no effect is an error (when the
//! user evidently meant something that will not happen) or a note on stderr (when it is
//! harmless), never silently ignored.
//!
//! The rules read clap's matches, so they see what was typed, not defaults. Each function
//! returns the notes to print, or the first error.

use anyhow::{bail, Result};
use clap::parser::ValueSource;
use clap::ArgMatches;
use datasets::DatasetSpec;

/// Prints each note on stderr as `note: …`.
pub(crate) fn print_notes(notes: &[String]) {
    for n in notes {
        eprintln!("note: {n}");
    }
}

/// Whether flag `id` (the field name) was given on the command line.
pub(crate) fn given(m: &ArgMatches, id: &str) -> bool {
    m.try_get_raw(id).is_ok_and(|v| v.is_some())
        && m.value_source(id) == Some(ValueSource::CommandLine)
}

/// `--flag-name` of a field id, for messages.
fn flag(id: &str) -> String {
    format!("--{}", id.replace('_', "-"))
}

/// The flags that describe a new model's architecture and noise schedule, which a resumed run
/// takes from its checkpoint and `--init-weights W` from `W.json`.
const ARCHITECTURE: &[&str] = &[
    "preset",
    "base_channels",
    "channel_mults",
    "num_res_blocks",
    "attention_resolutions",
    "num_heads",
    "time_mode",
    "unconditional",
    "schedule",
    "timesteps",
    "zero_terminal_snr",
    "prediction_type",
];

/// The other flags of a new `train` run that a resumed run takes from its checkpoint instead.
const NEW_RUN_ONLY: &[&str] = &[
    "dataset",
    "init_weights",
    "image_size",
    "channels",
    "limit",
    "dropout",
    "batch_size",
    "lr",
    "min_lr",
    "warmup_steps",
    "weight_decay",
    "grad_clip",
    "label_dropout",
    "ema_decay",
    "seed",
    "hflip",
    "checkpoint_every",
    "keep_checkpoints",
    "sample_every",
    "sample_steps",
    "sample_guidance",
    "grid_cols",
    "max_nonfinite",
];

/// `trainer train`.
pub(crate) fn train(m: &ArgMatches) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    if given(m, "resume") {
        if let Some(id) = NEW_RUN_ONLY
            .iter()
            .chain(ARCHITECTURE)
            .find(|id| given(m, id))
        {
            bail!(
                "{} does not apply with --resume: a resumed run keeps its checkpoint's settings \
                 (only --steps, --device or --devices, --sync-every, --precision and --out may be given)",
                flag(id)
            );
        }
        return Ok(notes);
    }
    if given(m, "init_weights") {
        if let Some(id) = ARCHITECTURE.iter().find(|id| given(m, id)) {
            let w: &std::path::PathBuf = m.get_one("init_weights").expect("given");
            bail!(
                "{} does not apply with --init-weights: the model and its schedule come from {}",
                flag(id),
                diffusion::weights::config_path(w).display()
            );
        }
    }
    let spec: &String = m.get_one("dataset").expect("has a default");
    dataset_shape(m, spec)?;
    if m.get_flag("unconditional") {
        for id in ["label_dropout", "sample_guidance"] {
            if given(m, id) {
                notes.push(format!(
                    "{} does not apply to an unconditional model (--unconditional): ignored",
                    flag(id)
                ));
            }
        }
    }
    Ok(notes)
}

/// `--image-size` and `--channels` on a dataset whose images come in one size: an error unless
/// they say what the data is (they exist for image folders).
pub(crate) fn dataset_shape(m: &ArgMatches, spec: &str) -> Result<()> {
    // A bad name is reported where the dataset is loaded.
    let Ok(parsed) = DatasetSpec::parse(spec, 0, 0) else {
        return Ok(());
    };
    let Some([c, h, _]) = parsed.fixed_shape() else {
        return Ok(());
    };
    for (id, have) in [("image_size", h), ("channels", c)] {
        if given(m, id) {
            let v: usize = *m.get_one(id).expect("given");
            if v != have {
                bail!(
                    "{} {v} does not apply to {}: its images are {c}×{h}×{h} (only folder: \
                     datasets are resized)",
                    flag(id),
                    parsed.kind()
                );
            }
        }
    }
    Ok(())
}

/// The sampler flags (`sample`, `eval`): `--eta` is DDIM's alone (`--karras-sigmas` is
/// checked with the sampler settings).
pub(crate) fn sampler(m: &ArgMatches) -> Result<()> {
    let sampler: &String = m.get_one("sampler").expect("has a default");
    if given(m, "eta") && sampler != "ddim" {
        bail!("--eta applies to --sampler ddim only (this is --sampler {sampler})");
    }
    Ok(())
}

/// `trainer sample`, once the model is known: guidance means nothing without a class.
pub(crate) fn sample(m: &ArgMatches, unconditional_model: bool) -> Result<Vec<String>> {
    if given(m, "mask") {
        // Inpainting takes RePaint's own steps; --eta is RePaint's η.
        if let Some(id) = ["sampler", "karras_sigmas"]
            .into_iter()
            .find(|id| given(m, id))
        {
            bail!(
                "{} does not apply with --mask: inpainting takes RePaint's steps (--steps, --eta)",
                flag(id)
            );
        }
    } else {
        sampler(m)?;
    }
    let mut notes = Vec::new();
    let class: &String = m.get_one("class").expect("has a default");
    if given(m, "guidance") && (unconditional_model || class == "none") {
        notes.push(format!(
            "--guidance does not apply to unconditional sampling ({}): ignored",
            if unconditional_model {
                "an unconditional model"
            } else {
                "--class none"
            }
        ));
    }
    Ok(notes)
}

/// `trainer eval`.
pub(crate) fn eval(m: &ArgMatches) -> Result<Vec<String>> {
    sampler(m)?;
    let mut notes = Vec::new();
    if given(m, "guidance") && given(m, "guidance_sweep") {
        bail!(
            "--guidance and --guidance-sweep: give one (the sweep evaluates every scale it lists)"
        );
    }
    if given(m, "classifier") && m.get_flag("no_classifier") {
        bail!("--classifier and --no-classifier: give one");
    }
    if given(m, "inception_weights") && m.get_flag("no_inception") {
        bail!("--inception-weights and --no-inception: give one");
    }
    if given(m, "inception_batch") && m.get_flag("no_inception") {
        notes.push("--inception-batch does not apply with --no-inception: ignored".into());
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::CommandFactory;

    enum Want {
        Ok,
        Note(&'static str),
        Error(&'static str),
    }
    use Want::*;

    /// The subcommand's matches of `trainer ARGS`.
    fn matches(args: &str) -> ArgMatches {
        let argv = std::iter::once("trainer").chain(args.split_whitespace());
        let m = Cli::command().try_get_matches_from(argv).expect("parses");
        m.subcommand().expect("a subcommand").1.clone()
    }

    /// Every rule, flag by flag: what was typed → what the user is told.
    #[test]
    fn every_flag_that_does_not_apply_is_reported() {
        let cases: &[(&str, Want)] = &[
            // train: a fixed-size dataset is not resized.
            (
                "train --dataset mnist10k --image-size 64",
                Error("--image-size 64 does not apply to mnist10k: its images are 1×28×28"),
            ),
            (
                "train --dataset mnist10k --channels 3",
                Error("--channels 3 does not apply to mnist10k"),
            ),
            (
                "train --dataset fashion-mnist --image-size 32",
                Error("--image-size 32 does not apply to fashion-mnist"),
            ),
            (
                "train --dataset cifar10:/d --image-size 64",
                Error("does not apply to cifar10: its images are 3×32×32"),
            ),
            (
                "train --dataset cifar10:/d --channels 1",
                Error("--channels 1 does not apply to cifar10"),
            ),
            ("train --dataset mnist10k --image-size 28 --channels 1", Ok),
            ("train --dataset folder:/d --image-size 64 --channels 1", Ok),
            ("train", Ok),
            // train --resume: the checkpoint's settings win.
            (
                "train --resume r --lr 1e-3",
                Error("--lr does not apply with --resume"),
            ),
            (
                "train --resume r --time-mode add",
                Error("--time-mode does not apply with --resume"),
            ),
            // train --init-weights: the weights' config gives the model and its schedule.
            (
                "train --init-weights w.safetensors --schedule cosine",
                Error("--schedule does not apply with --init-weights: the model and its schedule come from w.json"),
            ),
            ("train --init-weights w.safetensors --dropout 0 --lr 1e-5", Ok),
            (
                "sample --init-image i.png --mask m.png --sampler ddim",
                Error("--sampler does not apply with --mask"),
            ),
            ("sample --init-image i.png --mask m.png --eta 1", Ok),
            (
                "train --resume r --batch-size 8",
                Error("--batch-size does not apply with --resume"),
            ),
            (
                "train --resume r --dataset fashion-mnist",
                Error("--dataset does not apply with --resume"),
            ),
            (
                "train --resume r --preset cifar10_ddpm",
                Error("--preset does not apply"),
            ),
            (
                "train --resume r --schedule cosine",
                Error("--schedule does not apply"),
            ),
            ("train --resume r --hflip", Error("--hflip does not apply")),
            ("train --resume r --seed 3", Error("--seed does not apply")),
            (
                "train --resume r --sample-every 5",
                Error("--sample-every does not apply"),
            ),
            (
                "train --resume r --steps 10 --device cpu --sync-every 2 --precision f32 --out r",
                Ok,
            ),
            // train: unconditional models have no classes to drop or guide.
            (
                "train --unconditional --label-dropout 0.2",
                Note("--label-dropout does not apply to an unconditional model"),
            ),
            (
                "train --unconditional --sample-guidance 2",
                Note("--sample-guidance does not apply to an unconditional model"),
            ),
            ("train --unconditional", Ok),
            // sample / eval: DDIM's η.
            (
                "sample --eta 0.5",
                Error("--eta applies to --sampler ddim only (this is --sampler ddpm)"),
            ),
            (
                "sample --sampler dpmsolver++ --eta 0",
                Error("--eta applies to --sampler ddim only"),
            ),
            ("sample --sampler ddim --eta 0.5", Ok),
            (
                "sample --class none --guidance 2",
                Note("--guidance does not apply to unconditional sampling (--class none)"),
            ),
            ("sample --class 3 --guidance 2", Ok),
            (
                "eval --eta 1",
                Error("--eta applies to --sampler ddim only"),
            ),
            (
                "eval --guidance 2 --guidance-sweep 1,2",
                Error("--guidance and --guidance-sweep: give one"),
            ),
            (
                "eval --classifier c.safetensors --no-classifier",
                Error("--classifier and --no-classifier"),
            ),
            (
                "eval --inception-weights i.safetensors --no-inception",
                Error("--inception-weights and --no-inception"),
            ),
            (
                "eval --no-inception --inception-batch 4",
                Note("--inception-batch does not apply with --no-inception"),
            ),
            ("eval --guidance-sweep 0,1,3 --sampler ddim --eta 0.3", Ok),
            // forward: the same dataset rule as train.
            (
                "forward --dataset mnist10k --image-size 32",
                Error("--image-size 32 does not apply to mnist10k"),
            ),
            ("forward --dataset folder:/d --image-size 32", Ok),
        ];
        for (args, want) in cases {
            let m = matches(args);
            let got = match args.split_whitespace().next().unwrap() {
                "train" => train(&m),
                "sample" => sample(&m, false),
                "eval" => eval(&m),
                "forward" => {
                    dataset_shape(&m, m.get_one::<String>("dataset").unwrap()).map(|_| vec![])
                }
                other => unreachable!("{other}"),
            };
            match (want, got) {
                (Ok, Result::Ok(notes)) => assert!(notes.is_empty(), "{args}: {notes:?}"),
                (Note(n), Result::Ok(notes)) => {
                    assert!(
                        notes.len() == 1 && notes[0].contains(n),
                        "{args}: {notes:?}"
                    )
                }
                (Error(e), Err(err)) => {
                    let err = err.to_string();
                    assert!(err.contains(e) && !err.contains('\n'), "{args}: {err}")
                }
                (_, got) => panic!("{args}: unexpected {got:?}"),
            }
        }
        // An unconditional model: guidance is noted whatever the class flag says.
        let notes = sample(&matches("sample --guidance 2"), true).unwrap();
        assert!(notes[0].contains("(an unconditional model)"), "{notes:?}");
    }
}
