//! `trainer`: train class-conditional DDPMs and sample, inspect and export them.
//!
//! This binary only parses arguments and calls the `training`, `datasets` and `diffusion`
//! crates.

mod cli;
mod devices_cmd;
mod eval_cmd;
mod export_cmd;
mod flags;
mod forward_cmd;
mod progress;
mod sample_cmd;
mod schedule_cmd;
mod serve_cmd;
mod train_cmd;

use clap::Parser;
use cli::{Cli, Command};

fn main() {
    flex_kernels::allocator::retain_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => train_cmd::cmd_train(a),
        Command::Sample(a) => sample_cmd::cmd_sample(a),
        Command::Schedule(a) => schedule_cmd::cmd_schedule(a),
        Command::Forward(a) => forward_cmd::cmd_forward(a),
        Command::Export(a) => export_cmd::cmd_export(a),
        Command::Serve(a) => serve_cmd::cmd_serve(a),
        Command::TrainClassifier(a) => eval_cmd::cmd_train_classifier(a),
        Command::Eval(a) => eval_cmd::cmd_eval(a),
        Command::EvalCompare(a) => eval_cmd::cmd_eval_compare(a),
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
        std::process::exit(1);
    }
}
