//! Self-tests of the Redis Cluster harness (`cache_tests::cluster`).
//!
//! Each test starts its own cluster (a few seconds each); run them with
//! `--test-threads=1` on small machines.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use cache_tests::cluster::{NodeRole, CLUSTER_SLOTS};
use cache_tests::{ClusterOptions, RedisCluster};

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn cluster_con(cluster: &RedisCluster) -> redis::cluster::ClusterConnection {
    cluster
        .cluster_client()
        .get_connection()
        .expect("cluster connection")
}

/// SETs `n` keys `prefix:i` -> `v:i` through a cluster connection.
fn write_keys(con: &mut redis::cluster::ClusterConnection, prefix: &str, n: usize) {
    for i in 0..n {
        redis::cmd("SET")
            .arg(format!("{prefix}:{i}"))
            .arg(format!("v:{i}"))
            .exec(con)
            .unwrap_or_else(|e| panic!("SET {prefix}:{i}: {e}"));
    }
}

fn assert_keys(con: &mut redis::cluster::ClusterConnection, prefix: &str, n: usize) {
    for i in 0..n {
        let v: Option<String> = redis::cmd("GET")
            .arg(format!("{prefix}:{i}"))
            .query(con)
            .unwrap_or_else(|e| panic!("GET {prefix}:{i}: {e}"));
        assert_eq!(
            v.as_deref(),
            Some(format!("v:{i}").as_str()),
            "{prefix}:{i}"
        );
    }
}

fn dbsize(cluster: &RedisCluster, port: u16) -> i64 {
    redis::cmd("DBSIZE")
        .query(&mut cluster.admin_connection(port))
        .unwrap()
}

fn slot_count(cluster: &RedisCluster, port: u16) -> usize {
    cluster
        .topology()
        .iter()
        .find(|v| v.port == port)
        .map(|v| v.slot_count())
        .unwrap_or(0)
}

#[test]
fn plain_cluster_covers_all_slots_and_spreads_keys() {
    let t = Instant::now();
    let cluster = RedisCluster::start(ClusterOptions::default());
    eprintln!("3x1 cluster up in {:?}", t.elapsed());

    let nodes = cluster.nodes();
    assert_eq!(nodes.len(), 6);
    let ports: BTreeSet<u16> = nodes.iter().map(|n| n.port()).collect();
    assert_eq!(ports.len(), 6);
    for n in nodes {
        assert!(![6379, 16379].contains(&n.port()) && n.bus_port() != 16379);
        assert_eq!(n.bus_port(), n.port() + 10000);
        assert_eq!(n.id().len(), 40);
        assert!(process_alive(n.pid().unwrap()));
    }
    let initial_primaries = nodes
        .iter()
        .filter(|n| n.initial_role() == NodeRole::Primary)
        .count();
    assert_eq!(initial_primaries, 3);
    assert_eq!(cluster.primaries().len(), 3);
    assert_eq!(cluster.replicas().len(), 3);
    for p in cluster.primaries() {
        assert_eq!(cluster.replicas_of(p).len(), 1, "replicas of {p}");
    }
    assert_eq!(
        cluster.url(),
        format!("redis://127.0.0.1:{}", nodes[0].port())
    );
    assert_eq!(cluster.seed_urls().len(), 6);
    assert!(cluster
        .seed_urls()
        .iter()
        .all(|u| u.starts_with("redis://127.0.0.1:")));

    // All slots covered, as every node sees it.
    cluster.check_state().unwrap();
    for n in cluster.nodes() {
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query(&mut cluster.admin_connection(n.port()))
            .unwrap();
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
        assert!(info.contains("cluster_slots_ok:16384"), "{info}");
    }
    let covered: usize = cluster
        .topology()
        .iter()
        .filter(|v| v.role == NodeRole::Primary)
        .map(|v| v.slot_count())
        .sum();
    assert_eq!(covered, usize::from(CLUSTER_SLOTS));

    // A ClusterClient routes keys to all primaries.
    let mut con = cluster_con(&cluster);
    write_keys(&mut con, "spread", 300);
    assert_keys(&mut con, "spread", 300);
    let mut total = 0;
    for p in cluster.primaries() {
        let n = dbsize(&cluster, p);
        assert!(n > 30, "primary {p} holds only {n} of 300 keys");
        total += n;
    }
    assert_eq!(total, 300);
    let key_owner = cluster.primary_for_key("spread:0");
    assert!(cluster.primaries().contains(&key_owner));
    let ks = cluster.keyspace();
    assert_eq!(ks.len(), 300);
    assert_eq!(ks["spread:7"], b"v:7".to_vec());

    // The async cluster connection works too.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut con = cluster
            .cluster_client()
            .get_async_connection()
            .await
            .unwrap();
        let v: String = redis::cmd("GET")
            .arg("spread:42")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(v, "v:42");
    });

    cluster.flushall();
    assert!(cluster.keyspace().is_empty());

    // Drop kills every node and removes the dirs.
    let pids: Vec<u32> = cluster.nodes().iter().filter_map(|n| n.pid()).collect();
    let dir = cluster.nodes()[0].dir().to_path_buf();
    drop(con);
    drop(cluster);
    assert!(pids.iter().all(|&p| !process_alive(p)), "{pids:?}");
    assert!(!dir.exists());
}

#[test]
fn killed_primary_fails_over_to_its_replica_and_rejoins_as_replica() {
    let mut cluster = RedisCluster::start(ClusterOptions::default());
    let mut con = cluster_con(&cluster);
    write_keys(&mut con, "fo", 100);

    let victim = cluster.primaries()[0];
    let replica = cluster.replicas_of(victim)[0];
    // Make sure the replica has everything before the primary dies.
    cluster.wait_for_replication(Duration::from_secs(5));
    assert_eq!(dbsize(&cluster, victim), dbsize(&cluster, replica));

    let t = Instant::now();
    cluster.kill_node(victim);
    assert!(!cluster.node(victim).is_running());
    let promoted = cluster.wait_for_failover_of(victim, Duration::from_secs(10));
    let took = t.elapsed();
    eprintln!("failover of {victim} to {promoted} took {took:?}");
    assert_eq!(promoted, replica);
    assert!(took < Duration::from_secs(10));
    assert!(cluster.primaries().contains(&replica));
    assert!(!cluster.primaries().contains(&victim));
    assert_eq!(cluster.primaries().len(), 3);

    // The data survived on the promoted replica (fresh client, fresh slot map).
    let mut con = cluster_con(&cluster);
    assert_keys(&mut con, "fo", 100);

    // The old primary comes back as a replica of the promoted one.
    let old_pid = cluster.node(victim).pid();
    assert_eq!(old_pid, None);
    cluster.restart_node(victim);
    cluster.wait_until_ok(Duration::from_secs(30));
    assert!(cluster.replicas().contains(&victim));
    assert_eq!(cluster.replicas_of(replica), vec![victim]);
    assert_eq!(cluster.node(victim).initial_role(), NodeRole::Primary);
    assert_keys(&mut con, "fo", 100);
}

#[test]
fn tls_cluster_serves_a_tls_cluster_client() {
    let cluster = RedisCluster::start(ClusterOptions {
        tls: true,
        ..ClusterOptions::default()
    });
    assert!(cluster.ca_cert_path().exists());
    for url in cluster.seed_urls() {
        assert!(url.starts_with("rediss://127.0.0.1:"), "{url}");
    }
    let mut con = cluster_con(&cluster);
    write_keys(&mut con, "tls", 100);
    assert_keys(&mut con, "tls", 100);
    for p in cluster.primaries() {
        assert!(dbsize(&cluster, p) > 0, "primary {p} holds no key");
    }

    // A client that does not trust the CA is refused.
    let untrusting = redis::cluster::ClusterClient::builder(cluster.seed_urls())
        .connection_timeout(Duration::from_secs(2))
        .certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(cluster.wrong_ca_path()).unwrap()),
        })
        .build()
        .unwrap();
    assert!(untrusting.get_connection().is_err());

    // MIGRATE between nodes and redis-cli work over TLS too.
    let slot = cluster.key_slot("tls:0");
    let source = cluster.primary_for_slot(slot);
    let target = *cluster.primaries().iter().find(|&&p| p != source).unwrap();
    cluster.migrate_slot(slot, source, target);
    assert_eq!(cluster.primary_for_key("tls:0"), target);
    cluster.reshard(target, source, 10);
    assert_keys(&mut con, "tls", 100);
}

#[test]
fn reshard_and_manual_slot_migration_move_slots_and_keys() {
    let cluster = RedisCluster::start(ClusterOptions {
        replicas_per_primary: 0,
        ..ClusterOptions::default()
    });
    assert_eq!(cluster.nodes().len(), 3);
    let mut con = cluster_con(&cluster);
    write_keys(&mut con, "rs", 200);

    // redis-cli --cluster reshard.
    let primaries = cluster.primaries();
    let (from, to) = (primaries[0], primaries[1]);
    let (from_before, to_before) = (slot_count(&cluster, from), slot_count(&cluster, to));
    cluster.reshard(from, to, 100);
    assert_eq!(slot_count(&cluster, from), from_before - 100);
    assert_eq!(slot_count(&cluster, to), to_before + 100);
    assert_keys(&mut con, "rs", 200);
    assert_eq!(cluster.keyspace().len(), 200);

    // Manual migration of one slot, paused half-way to observe ASK.
    let slot = cluster.key_slot("{mig}");
    let source = cluster.primary_for_slot(slot);
    let target = *cluster.primaries().iter().find(|&&p| p != source).unwrap();
    for i in 0..20 {
        redis::cmd("SET")
            .arg(format!("{{mig}}:{i}"))
            .arg(format!("m{i}"))
            .exec(&mut con)
            .unwrap();
    }
    let mut migration = cluster.begin_slot_migration(slot, source, target);
    assert_eq!(migration.remaining_keys(), 20);
    let moved = migration.migrate_some_keys(5);
    assert_eq!(moved.len(), 5);
    assert_eq!(migration.remaining_keys(), 15);

    let moved_key = moved[0].clone();
    let err = redis::cmd("GET")
        .arg(&moved_key)
        .query::<Option<String>>(&mut cluster.admin_connection(source))
        .expect_err("moved key must be redirected with ASK");
    assert_eq!(err.code(), Some("ASK"), "{err:?}");
    // A key still on the source is served there.
    let kept: Vec<Vec<u8>> = redis::cmd("CLUSTER")
        .arg("GETKEYSINSLOT")
        .arg(slot)
        .arg(1)
        .query(&mut cluster.admin_connection(source))
        .unwrap();
    let v: Option<String> = redis::cmd("GET")
        .arg(&kept[0])
        .query(&mut cluster.admin_connection(source))
        .unwrap();
    assert!(v.is_some());
    // The cluster client follows the ASK redirect.
    let v: Option<Vec<u8>> = redis::cmd("GET").arg(&moved_key).query(&mut con).unwrap();
    assert!(v.is_some(), "ClusterClient did not follow ASK");

    migration.finish();
    assert_eq!(cluster.primary_for_slot(slot), target);
    let err = redis::cmd("GET")
        .arg("{mig}:0")
        .query::<Option<String>>(&mut cluster.admin_connection(source))
        .expect_err("slot moved: MOVED expected");
    assert_eq!(err.code(), Some("MOVED"), "{err:?}");
    for i in 0..20 {
        let v: String = redis::cmd("GET")
            .arg(format!("{{mig}}:{i}"))
            .query(&mut con)
            .unwrap();
        assert_eq!(v, format!("m{i}"));
    }
    assert_eq!(cluster.keyspace().len(), 220);

    // The one-call variant moves it back.
    cluster.migrate_slot(slot, target, source);
    assert_eq!(cluster.primary_for_slot(slot), source);
    let total: i64 = cluster
        .primaries()
        .iter()
        .map(|&p| dbsize(&cluster, p))
        .sum();
    assert_eq!(total, 220);
}

#[test]
fn password_cluster_stops_and_re_forms_from_nodes_conf() {
    let password = "p@ss:w rd";
    let mut cluster = RedisCluster::start(ClusterOptions {
        password: Some(password.to_owned()),
        ..ClusterOptions::default()
    });
    assert_eq!(cluster.password(), Some(password));
    assert!(cluster
        .url()
        .starts_with("redis://:p%40ss%3Aw%20rd@127.0.0.1:"));

    // Without the password a node refuses commands.
    let port = cluster.nodes()[0].port();
    let mut anon = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap();
    let err = redis::cmd("GET")
        .arg("x")
        .query::<Option<String>>(&mut anon)
        .unwrap_err();
    assert!(format!("{err}").contains("NOAUTH"), "{err}");

    let mut con = cluster_con(&cluster);
    write_keys(&mut con, "pw", 50);
    assert_eq!(cluster.keyspace().len(), 50);

    // MIGRATE ... AUTH and redis-cli -a work with the password.
    let slot = cluster.key_slot("pw:0");
    let source = cluster.primary_for_slot(slot);
    let target = *cluster.primaries().iter().find(|&&p| p != source).unwrap();
    cluster.migrate_slot(slot, source, target);
    assert_eq!(cluster.primary_for_key("pw:0"), target);
    cluster.reshard(target, source, 10);
    assert_keys(&mut con, "pw", 50);

    let ids_before: Vec<String> = cluster.nodes().iter().map(|n| n.id().to_owned()).collect();
    let primaries_before = cluster.primaries();
    let pids: Vec<u32> = cluster.nodes().iter().filter_map(|n| n.pid()).collect();
    cluster.stop_all();
    assert!(cluster.nodes().iter().all(|n| n.pid().is_none()));
    assert!(pids.iter().all(|&p| !process_alive(p)));
    assert!(cluster.check_state().is_err());

    let t = Instant::now();
    cluster.start_all();
    eprintln!("re-formed in {:?}", t.elapsed());
    cluster.check_state().unwrap();
    let ids_after: Vec<String> = cluster.nodes().iter().map(|n| n.id().to_owned()).collect();
    assert_eq!(ids_before, ids_after);
    assert_eq!(cluster.primaries(), primaries_before);
    // Nothing is persisted: the data is gone, but the cluster serves again.
    assert!(cluster.keyspace().is_empty());
    let mut con = cluster_con(&cluster);
    write_keys(&mut con, "pw2", 50);
    assert_keys(&mut con, "pw2", 50);
}
