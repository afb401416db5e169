//! The local embedder against sentence-transformers' own vectors (committed; made by
//! scripts/reference_embeddings.py). Needs the model files that scripts/setup.sh installs.

use std::path::PathBuf;

use memoire_core::embed::{Embedder, cosine};
use memoire_providers::LocalEmbedder;

fn model_dir() -> PathBuf {
    std::env::var_os("MEMOIRE_EMBEDDING_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.models/all-MiniLM-L6-v2")
        })
}

fn reference() -> Vec<(String, Vec<f32>)> {
    let raw = include_str!("data/minilm_reference.json");
    let doc: serde_json::Value = serde_json::from_str(raw).expect("reference json");
    doc["sentences"]
        .as_array()
        .expect("sentences")
        .iter()
        .map(|s| {
            let v = s["embedding"]
                .as_array()
                .expect("embedding")
                .iter()
                .map(|x| x.as_f64().expect("f64") as f32)
                .collect();
            (s["text"].as_str().expect("text").to_owned(), v)
        })
        .collect()
}

fn load() -> LocalEmbedder {
    let dir = model_dir();
    LocalEmbedder::load(&dir, "all-MiniLM-L6-v2").unwrap_or_else(|e| {
        panic!(
            "cannot load the model from {} ({e}); run scripts/setup.sh",
            dir.display()
        )
    })
}

#[tokio::test]
async fn matches_sentence_transformers_in_a_batch_and_one_by_one() {
    let model = load();
    assert_eq!(model.dims(), 384);
    let reference = reference();
    let texts: Vec<String> = reference.iter().map(|(t, _)| t.clone()).collect();
    let batch = model.embed(&texts).await.expect("embed batch");
    for ((text, want), got) in reference.iter().zip(&batch) {
        let c = cosine(want, got);
        assert!(c >= 0.9999, "batch: cosine {c} for {text:?}");
        let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "unit length: {norm}");
    }
    for ((text, want), in_batch) in reference.iter().zip(&batch).take(3) {
        let one = model
            .embed(std::slice::from_ref(text))
            .await
            .expect("embed one");
        let c = cosine(want, &one[0]);
        assert!(c >= 0.9999, "single: cosine {c} for {text:?}");
        // A pass does not pad, and each text's arithmetic is its own.
        assert_eq!(
            &one[0], in_batch,
            "alone and in a batch differ for {text:?}"
        );
    }
}

#[tokio::test]
async fn similar_meanings_are_closer_than_unrelated_ones() {
    let model = load();
    let texts: Vec<String> = [
        "Where does the user live?",
        "Lives in Dallas. home city",
        "Allergic to peanuts",
    ]
    .map(String::from)
    .to_vec();
    let v = model.embed(&texts).await.expect("embed");
    assert!(cosine(&v[0], &v[1]) > cosine(&v[0], &v[2]));
}

#[tokio::test]
async fn long_inputs_are_truncated_not_rejected() {
    let model = load();
    let long = "memory ".repeat(2000);
    let v = model.embed(&[long]).await.expect("embed");
    assert_eq!(v[0].len(), 384);
}

#[test]
fn a_missing_model_directory_names_the_setting_and_the_fix() {
    let err =
        LocalEmbedder::load(std::path::Path::new("/nonexistent/model"), "m").expect_err("no model");
    let msg = err.to_string();
    assert!(
        msg.contains("embedding_model_dir") && msg.contains("setup.sh"),
        "{msg}"
    );
}

/// A model directory whose `config.json` is `edit`ed; the other files are the real model's.
fn model_with_config(edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let (real, dir) = (
        model_dir(),
        std::env::temp_dir().join(format!("memoire-model-{}", uuid::Uuid::new_v4())),
    );
    std::fs::create_dir_all(&dir).expect("temp dir");
    for name in ["tokenizer.json", "model.safetensors"] {
        std::os::unix::fs::symlink(real.join(name), dir.join(name)).expect("link");
    }
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(real.join("config.json")).expect("config"))
            .expect("config json");
    edit(&mut config);
    std::fs::write(dir.join("config.json"), config.to_string()).expect("write config");
    dir
}

#[test]
fn a_config_that_disagrees_with_the_weights_is_refused_with_the_reason() {
    let cases: [(&str, serde_json::Value, &str); 3] = [
        ("hidden_size", 372.into(), "has shape"),
        ("hidden_act", "swish".into(), "hidden_act \"swish\""),
        ("num_attention_heads", 5.into(), "num_attention_heads 5"),
    ];
    for (field, value, reason) in cases {
        let dir = model_with_config(|c| c[field] = value);
        let err = LocalEmbedder::load(&dir, "m").expect_err(field);
        let msg = err.to_string();
        assert!(
            msg.contains("embedding_model_dir") && msg.contains(reason),
            "{field}: {msg}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queries_that_wait_together_are_embedded_together_each_as_if_alone() {
    let model = load();
    let reference = reference();
    // More at once than there are passes: some wait, and are embedded in one pass together,
    // each still giving sentence-transformers' vector.
    let mut calls = tokio::task::JoinSet::new();
    for (text, want) in reference.iter().cycle().take(24) {
        let model = model.clone();
        let (text, want) = (text.clone(), want.clone());
        calls.spawn(async move {
            let got = model
                .embed(std::slice::from_ref(&text))
                .await
                .expect("embed");
            (text, cosine(&want, &got[0]))
        });
    }
    let mut done = 0;
    while let Some(call) = calls.join_next().await {
        let (text, c) = call.expect("task");
        assert!(c >= 0.9999, "cosine {c} for {text:?}");
        done += 1;
    }
    assert_eq!(done, 24);
    // A pass left free serves the next query at once, alone.
    let one = model
        .embed(std::slice::from_ref(&reference[0].0))
        .await
        .expect("alone");
    assert!(cosine(&reference[0].1, &one[0]) >= 0.999);
}
