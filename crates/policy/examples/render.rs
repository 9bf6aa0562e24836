//! Prints the nftables JSON batch for the v3 resources on standard input
//! (`cargo run -p tabby-policy --example render < policies.yaml | nft -j -f -`);
//! `--node NAME` compiles only that node's endpoints.

use std::io::Read;

use tabby_api::load::parse_documents;
use tabby_policy::compile::{compile, compile_for_node};
use tabby_policy::model::Model;
use tabby_policy::nft::render;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text)?;
    let resources = parse_documents(&text, "stdin").map_err(|e| format!("{e:?}"))?;
    let model = Model::from_resources(&resources)?;
    let args: Vec<String> = std::env::args().collect();
    let compiled = match args.iter().position(|a| a == "--node") {
        Some(i) => compile_for_node(&model, args.get(i + 1).ok_or("--node needs a name")?),
        None => compile(&model),
    };
    println!("{}", serde_json::to_string_pretty(&render(&compiled))?);
    Ok(())
}
