//! `trainer`: train class-conditional DDPMs and sample, inspect and export them.
//!
//! This binary only parses arguments and calls the `training`, `datasets` and `diffusion`
//! crates.

mod cli;
mod devices_cmd;
mod eval_cmd;
mod export_cmd;
mod flag_rules;
mod flags;
mod forward_cmd;
mod progress;
mod sample_cmd;
mod schedule_cmd;
mod serve_cmd;
mod signals;
mod train_cmd;

use clap::{CommandFactory, FromArgMatches};
use cli::{Cli, Command};

fn main() {
    flex_kernels::allocator::retain_freed_memory();
    // The matches as well as the parsed flags: `flag_rules` asks which flags were typed.
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let m = matches.subcommand().expect("a subcommand is required").1;
    let result = match cli.command {
        Command::Train(a) => train_cmd::cmd_train(a, m),
        Command::Sample(a) => sample_cmd::cmd_sample(a, m),
        Command::Schedule(a) => schedule_cmd::cmd_schedule(a),
        Command::Forward(a) => forward_cmd::cmd_forward(a, m),
        Command::Export(a) => export_cmd::cmd_export(a),
        Command::ImportDiffusers(a) => export_cmd::cmd_import(a),
        Command::Serve(a) => serve_cmd::cmd_serve(a),
        Command::TrainClassifier(a) => eval_cmd::cmd_train_classifier(a),
        Command::Eval(a) => eval_cmd::cmd_eval(a, m),
        Command::EvalCompare(a) => eval_cmd::cmd_eval_compare(a),
        Command::EvalEdit(a) => eval_cmd::cmd_eval_edit(a),
        Command::Devices(a) => devices_cmd::cmd_devices(a),
    };
    if let Err(e) = result {
        // One line: the outermost context and its causes (a cause already quoted by the
        // message before it is not repeated).
        let mut msg: Vec<String> = Vec::new();
        for cause in e.chain().map(|c| c.to_string()) {
            if !msg.last().is_some_and(|m| m.ends_with(&cause)) {
                msg.push(cause);
            }
        }
        eprintln!("error: {}", msg.join(": "));
        // A run stopped by a signal (after saving) exits as the signal would have.
        let code = match (
            e.downcast_ref::<training::TrainError>(),
            e.downcast_ref::<signals::Stopped>(),
        ) {
            (Some(training::TrainError::Stopped { reason, .. }), _) if reason == "SIGINT" => 130,
            (Some(training::TrainError::Stopped { .. }), _) => 143,
            (_, Some(s)) if s.signal == "SIGINT" => 130,
            (_, Some(_)) => 143,
            _ => 1,
        };
        std::process::exit(code);
    }
}
