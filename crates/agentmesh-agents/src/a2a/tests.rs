use serde_json::json;

use super::*;

#[test]
fn canonical_json_sorts_keys_by_utf16_and_has_no_whitespace() {
    let v = json!({"b": [1, true, null], "a": "x\u{1}\"/é", "\u{e9}": 1, "\u{1f600}": 2, "ab": {}});
    // By UTF-16 code units: U+00E9 (0x00E9) before U+1F600 (0xD83D 0xDE00).
    assert_eq!(
        canonical(&v).unwrap(),
        "{\"a\":\"x\\u0001\\\"/é\",\"ab\":{},\"b\":[1,true,null],\"é\":1,\"😀\":2}"
    );
    assert!(canonical(&json!({"n": 1.5})).is_err());
    assert!(canonical(&json!({"n": 9_007_199_254_740_993_u64})).is_err());
}

#[test]
fn empty_values_are_left_out_of_the_signed_form() {
    let v = json!({"a": "", "b": [], "c": {"d": {}}, "e": [{"f": ""}], "g": false, "h": "x"});
    assert_eq!(without_empty(v), Some(json!({"g": false, "h": "x"})));
}

#[test]
fn a_signed_card_verifies_with_the_jws_module_over_its_canonical_form() {
    let ca = agentmesh_sdk::testing::TestCa::new("example.org");
    let source = ca.source("spiffe://example.org/ns/default/sa/executor");
    let card = json!({"name": "executor", "skills": [{"id": "executor", "tags": ["a2a:SendMessage"]}],
        "securityRequirements": [{"schemes": {"spiffe": {}}}]});
    let sig = sign_card(&source, &card).unwrap();
    let jws = format!(
        "{}..{}",
        sig["protected"].as_str().unwrap(),
        sig["signature"].as_str().unwrap()
    );
    let payload = canonical(&without_empty(card.clone()).unwrap()).unwrap();
    let ok = agentmesh_sdk::jws::verify_detached(
        &jws,
        payload.as_bytes(),
        &ca.roots(),
        &"spiffe://example.org/ns/default/sa/executor"
            .parse()
            .unwrap(),
        std::time::SystemTime::now(),
    )
    .unwrap();
    assert_eq!(ok.signer.path(), "/ns/default/sa/executor");
    // The signature does not cover another card.
    let mut other = card;
    other["name"] = json!("planner");
    let payload = canonical(&without_empty(other).unwrap()).unwrap();
    assert!(
        agentmesh_sdk::jws::verify_detached(
            &jws,
            payload.as_bytes(),
            &ca.roots(),
            &"spiffe://example.org/ns/default/sa/executor"
                .parse()
                .unwrap(),
            std::time::SystemTime::now(),
        )
        .is_err()
    );
}
