//! Extreme values written straight into Redis, as any producer, an old version or a hand
//! with `redis-cli` could leave them: scores far in the future, negative and infinite
//! (Redis refuses NaN), huge counts, payloads that are not UTF-8, 1 MB fields, fields of
//! the wrong type, process hashes and stats keys holding garbage. The dashboard's and the
//! CLI's tests read them all and must answer with a page or a clear error, never a panic.

use redis::Value;

/// One megabyte of text.
pub fn megabyte() -> String {
    "m".repeat(1 << 20)
}

/// The job ids written, for the detail pages and the `show`, `retry`, `delete` and `kill`
/// commands.
pub const JIDS: [&str; 8] = [
    "far0future0000000000000",
    "negative0000000000000000",
    "infinite0000000000000000",
    "neginfinite0000000000000",
    "wrongtypes00000000000000",
    "hugecount000000000000000",
    "megabyte0000000000000000",
    "minretries00000000000000",
];

/// The queues written, with names no tool made.
pub fn queue_names() -> Vec<Vec<u8>> {
    vec![
        b"extreme".to_vec(),
        b"bad\xff\xfename".to_vec(),
        "q".repeat(10_000).into_bytes(),
        b"spaces and / slashes ? # %".to_vec(),
    ]
}

fn job(jid: &str, extra: &str) -> String {
    format!(
        r#"{{"class":"Extreme","queue":"extreme","args":[1],"jid":"{jid}","retry":true{extra}}}"#
    )
}

fn run(conn: &mut redis::Connection, args: &[&[u8]]) {
    let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    let _: Value = cmd
        .query(conn)
        .unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(args[0])));
}

/// Writes every extreme value into the Redis at `url` (no namespace).
pub fn seed(url: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_connection().unwrap();
    let c = &mut conn;
    let big = megabyte();
    let error = |message: &str| {
        format!(
            r#","error_class":"E","error_message":"{message}","retry_count":0,"failed_at":1700000000"#
        )
    };
    let entries: Vec<(&str, Vec<u8>)> = vec![
        ("9e12", job(JIDS[0], &error("far future")).into_bytes()),
        ("-1e12", job(JIDS[1], &error("negative")).into_bytes()),
        ("inf", job(JIDS[2], &error("infinite")).into_bytes()),
        ("-inf", job(JIDS[3], &error("minus infinite")).into_bytes()),
        (
            "1e300",
            job(
                JIDS[4],
                r#","enqueued_at":"yesterday","created_at":1e300,"failed_at":"x","retried_at":-1e300,"error_class":5,"error_message":["a"],"retry_count":"many","error_backtrace":7,"tags":"t","bid":{}"#,
            )
            .into_bytes(),
        ),
        (
            "1.7e9",
            job(
                JIDS[5],
                r#","enqueued_at":1e300,"created_at":-1e300,"failed_at":9e15,"error_class":"E","error_message":"huge","retry_count":9223372036854775807,"interrupted_count":4294967295"#,
            )
            .into_bytes(),
        ),
        (
            "1.8e9",
            job(
                JIDS[6],
                &format!(r#","error_class":"{big}","error_message":"{big}","retry_count":0,"failed_at":1700000000,"blob":"{big}""#),
            )
            .into_bytes(),
        ),
        (
            "1.9e9",
            job(JIDS[7], r#","error_class":"E","error_message":"low","retry_count":-9223372036854775808,"failed_at":1e300,"enqueued_at":-5"#)
                .into_bytes(),
        ),
        ("2e9", b"\xff\xfe{\"class\":\"NotUtf8\"}".to_vec()),
        ("2.1e9", b"null".to_vec()),
        ("2.2e9", b"[1,2,3]".to_vec()),
        ("2.3e9", big.clone().into_bytes()),
        ("2.4e9", Vec::new()),
    ];
    for set in ["schedule", "retry", "dead"] {
        for (score, payload) in &entries {
            run(c, &[b"ZADD", set.as_bytes(), score.as_bytes(), payload]);
        }
    }

    // Queues with names and jobs no tool wrote.
    for name in queue_names() {
        run(c, &[b"SADD", b"queues", &name]);
        let key = [b"queue:".as_slice(), &name].concat();
        for payload in [
            job("q1", r#","enqueued_at":9e12"#).into_bytes(),
            job("q2", r#","enqueued_at":-9e12"#).into_bytes(),
            job("q3", r#","enqueued_at":"noon""#).into_bytes(),
            job("q4", &format!(r#","enqueued_at":1e300,"blob":"{big}""#)).into_bytes(),
            b"\xff\xfe not utf-8".to_vec(),
            Vec::new(),
        ] {
            run(c, &[b"LPUSH", &key, &payload]);
        }
    }
    // Pauses until far, infinite and odd times.
    run(c, &[b"ZADD", b"jobqueue:paused", b"9e12", b"extreme"]);
    run(
        c,
        &[b"ZADD", b"jobqueue:paused", b"inf", b"bad\xff\xfename"],
    );
    run(c, &[b"ZADD", b"jobqueue:paused", b"1e300", b"never"]);

    // Stats that are not numbers, or are out of range.
    for (key, value) in [
        ("stat:processed", "lots"),
        ("stat:failed", "-5"),
        ("jobqueue:stat:skipped", "1e400"),
        ("jobqueue:stat:cancelled", "99999999999999999999999999"),
    ] {
        run(c, &[b"SET", key.as_bytes(), value.as_bytes()]);
    }

    // Live processes whose hashes hold garbage, huge numbers and big fields.
    let classes = format!(
        r#"{{"Extreme":{{"window":{{"runs":18446744073709551615,"failed":18446744073709551615,"max_us":18446744073709551615,"hist":{{"0":18446744073709551615,"9":18446744073709551615,"65535":18446744073709551615}},"peak_max":18446744073709551615}},"total":[18446744073709551615,18446744073709551615],"violations":[{{"jid":"x","limit":"time","figure":18446744073709551615,"allowed":0,"at_ms":18446744073709551615,"tier":"{big}"}},{{"jid":"y","limit":"alloc","figure":18446744073709551615,"allowed":18446744073709551615,"at_ms":0,"tier":"rare"}}]}},"Small":{{"window":{{"runs":1,"failed":0,"max_us":5,"hist":{{"5":1}}}},"total":[1,0]}}}}"#
    );
    let info_huge = r#"{"hostname":"h","pid":-1,"concurrency":1e30,"queues":"not a list","tag":5,"started_at":9e12,"sensitive":{"Extreme":5,"Other":[1,null,"password"]},"labels":{}}"#;
    type Fields<'a> = Vec<(&'a [u8], Vec<u8>)>;
    let processes: Vec<(&[u8], Fields)> = vec![
        (
            b"garbage:1:a",
            vec![
                (b"info", b"not json".to_vec()),
                (b"busy", b"lots".to_vec()),
                (b"beat", b"never".to_vec()),
                (b"quiet", b"maybe".to_vec()),
                (b"rss", b"-1".to_vec()),
                (b"classes", b"garbage".to_vec()),
            ],
        ),
        (
            b"huge:2:b",
            vec![
                (b"info", info_huge.as_bytes().to_vec()),
                (b"busy", b"18446744073709551616".to_vec()),
                (b"beat", b"9e12".to_vec()),
                (b"quiet", b"true".to_vec()),
                (b"rss", b"99999999999999999999999".to_vec()),
                (b"classes", classes.clone().into_bytes()),
            ],
        ),
        (
            b"twin:3:c",
            vec![
                (b"info", info_huge.as_bytes().to_vec()),
                (b"busy", b"-1".to_vec()),
                (b"beat", b"-inf".to_vec()),
                (b"rss", b"18446744073709551615".to_vec()),
                (b"classes", classes.into_bytes()),
            ],
        ),
        (
            b"bad\xff:4:d",
            vec![(b"info", b"\xff\xfe".to_vec()), (b"busy", b"\xff".to_vec())],
        ),
        (b"empty:5:e", Vec::new()),
    ];
    for (identity, fields) in &processes {
        run(c, &[b"SADD", b"processes", identity]);
        for (field, value) in fields {
            run(c, &[b"HSET", identity, field, value]);
        }
        run(c, &[b"EXPIRE", identity, b"600"]);
        let work = [*identity, b":work".as_slice()].concat();
        for (slot, value) in [
            (
                b"s1".as_slice(),
                br#"{"queue":"q","payload":"\u00ff","run_at":9e12}"#.to_vec(),
            ),
            (
                b"s2",
                br#"{"queue":5,"payload":[],"run_at":"now"}"#.to_vec(),
            ),
            (b"s3", b"\xff\xfe".to_vec()),
            (b"\xff", b"{}".to_vec()),
            (
                b"s4",
                format!(
                    r#"{{"queue":"q","payload":{:?},"run_at":-1e300}}"#,
                    job("running", &format!(r#","blob":"{big}""#))
                )
                .into_bytes(),
            ),
        ] {
            run(c, &[b"HSET", &work, slot, &value]);
        }
    }

    // Periodic schedules described wrongly, with odd last ticks and pauses.
    for (name, description) in [
        (b"not-json".as_slice(), b"{{{".to_vec()),
        (
            b"huge",
            br#"{"name":"huge","schedule":5,"class":["x"],"queue":null,"args":"no","next_tick":9e12,"next_ticks":[1e300,-1,"x",null],"published_at":-1e300,"retry":18446744073709551615}"#.to_vec(),
        ),
        (
            b"plain",
            br#"{"name":"plain","schedule":"every 1s","class":"Extreme","queue":"extreme","args":[],"next_tick":1e300,"next_ticks":[]}"#.to_vec(),
        ),
        (b"bad\xff", b"\xff".to_vec()),
    ] {
        run(c, &[b"HSET", b"jobqueue:periodic", name, &description]);
    }
    run(c, &[b"SET", b"jobqueue:lock:periodic:huge:last", b"1e400"]);
    run(c, &[b"SET", b"jobqueue:lock:periodic:huge:paused", b"9e15"]);
    run(
        c,
        &[b"SET", b"jobqueue:lock:periodic:plain:last", b"garbage"],
    );
    run(
        c,
        &[b"SET", b"jobqueue:lock:periodic:plain:paused", b"-1e300"],
    );

    // Limits whose next look is far away, with nothing behind them.
    run(c, &[b"ZADD", b"jobqueue:limits", b"9e12", b"far"]);
    run(c, &[b"ZADD", b"jobqueue:limits", b"-inf", b"\xff\xfe"]);
    run(c, &[b"ZADD", b"jobqueue:limits", b"inf", big.as_bytes()]);
}
