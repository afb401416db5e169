//! The recall-quality harness (`make eval`) on a tiny synthetic conversation: the data format is
//! read (with its malformed evidence ids), the conversation goes in through Ingest and the
//! questions through Recall, the baselines are computed, and the answers are the turns that say
//! them — including one only the turn's speaker and date identify, and one that follows its
//! question.

use memoire_tests::TestServer;
use memoire_tests::eval;

fn conversation() -> serde_json::Value {
    serde_json::json!({
        "speaker_a": "Priya",
        "speaker_b": "Tomas",
        "session_1_date_time": "9:15 am on 3 March, 2024",
        "session_1": [
            {"speaker": "Priya", "dia_id": "D1:1", "text": "Morning Tomas! How was the weekend?"},
            {"speaker": "Tomas", "dia_id": "D1:2", "text": "Great, I finally finished the bookshelf for the hallway."},
            {"speaker": "Priya", "dia_id": "D1:3", "text": "Nice! We adopted a grey kitten from the shelter on Saturday."},
            {"speaker": "Tomas", "dia_id": "D1:4", "text": "What did you name it?"},
            {"speaker": "Priya", "dia_id": "D1:5", "text": "Pebble, after the little stones at the beach."},
            {"speaker": "Tomas", "dia_id": "D1:6", "text": "Lovely. My sister keeps bees in her garden, by the way."}
        ],
        "session_2_date_time": "6:40 pm on 19 July, 2024",
        "session_2": [
            {"speaker": "Tomas", "dia_id": "D2:1", "text": "I signed up for the city marathon in October.", "blip_caption": "a pair of running shoes"},
            {"speaker": "Priya", "dia_id": "D2:2", "text": "Wow, how far do you run each week now?"},
            {"speaker": "Tomas", "dia_id": "D2:3", "text": "About forty kilometres, mostly along the river."},
            {"speaker": "Priya", "dia_id": "D2:4", "text": "I started pottery classes on Thursdays, it is relaxing."},
            {"speaker": "Tomas", "dia_id": "D2:5", "text": "Does Pebble still knock things off the shelves?"},
            {"speaker": "Priya", "dia_id": "D2:6", "text": "Every single morning, especially my mugs."}
        ],
        "session_3_date_time": "1:00 pm on 1 August, 2024",
        "qa": [
            {"question": "What pet did Priya adopt?", "answer": "a grey kitten", "evidence": ["D1:3"], "category": 4},
            {"question": "What is the name of Priya's kitten?", "answer": "Pebble", "evidence": ["D1:5", "D1:03"], "category": 4},
            {"question": "What race did Tomas sign up for?", "answer": "the city marathon", "evidence": ["D2:1"], "category": 4},
            {"question": "How much does Tomas run each week?", "answer": "about forty kilometres", "evidence": ["D2:3; D2:2"], "category": 1},
            {"question": "When did Priya mention pottery classes?", "answer": "July 2024", "evidence": ["D:2:4"], "category": 2},
            {"question": "What does the kitten knock off the shelves?", "answer": "mugs", "evidence": ["D2:6", "D9:1"], "category": 3},
            {"question": "Is this unanswerable?", "answer": "", "evidence": ["D1:1"], "category": 5}
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_ingests_asks_and_scores_a_small_conversation() {
    let dir = std::env::temp_dir().join(format!("memoire-eval-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("tiny.json"), conversation().to_string()).expect("write");
    let convs = eval::read_dir(&dir).expect("read");
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(convs.len(), 1);
    let c = &convs[0];
    assert_eq!(c.turns().count(), 12, "the empty session is skipped");
    assert_eq!(c.questions.len(), 6, "category 5 is left out");
    assert_eq!(
        c.questions[1].evidence,
        vec!["D1:5", "D1:3"],
        "D1:03 repaired"
    );
    assert_eq!(
        c.questions[3].evidence,
        vec!["D2:3", "D2:2"],
        "packed ids split"
    );
    assert_eq!(c.questions[4].evidence, vec!["D2:4"], "D:2:4 repaired");
    assert_eq!(c.questions[5].evidence, vec!["D2:6"], "unknown ids dropped");

    let server = TestServer::start().await;
    let mut dump = Vec::new();
    let o = eval::evaluate(&server, &convs, false, Some(&mut dump))
        .await
        .expect("evaluate");
    assert_eq!(o.recall.mean(None).1, 6);
    assert_eq!(
        o.unstable, 0,
        "asking for more items reordered the first ones"
    );
    assert_eq!(o.latencies.len(), 6);
    let (recall, _) = o.recall.mean(None);
    let (bm25, _) = o.bm25.mean(None);
    assert!(
        recall[3] >= 0.99,
        "every evidence turn within 20 items: {recall:?}"
    );
    assert!(recall[2] >= 0.9, "R@10 {recall:?}");
    assert!(bm25[3] > 0.5, "the BM25 baseline ran: {bm25:?}");
    // The dump has a line per question, with score components.
    let lines = String::from_utf8(dump).expect("utf8");
    assert_eq!(lines.lines().count(), 6);
    let first: serde_json::Value =
        serde_json::from_str(lines.lines().next().expect("line")).expect("json");
    assert!(first["items"][0]["vector"].as_f64().is_some(), "{first}");
}
