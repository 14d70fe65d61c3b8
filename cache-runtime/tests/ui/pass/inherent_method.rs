//! Methods: `skip(self)` / `include(self)`, every receiver form, associated functions.
#![allow(dead_code)]

use cache_runtime::cache_result;
use serde::Serialize;

#[derive(Serialize)]
struct Service {
    region: String,
}

impl Service {
    #[cache_result(skip(self))]
    async fn shared(&self, id: u32) -> String {
        format!("{}:{id}", self.region)
    }

    #[cache_result(include(self), namespace = "ai")]
    async fn per_instance(&self, id: u32) -> String {
        format!("{}:{id}", self.region)
    }

    #[cache_result(skip(self))]
    async fn by_mut(&mut self, id: u32) -> u32 {
        self.region.push('!');
        id
    }

    #[cache_result(include(self), companions = true)]
    async fn by_value(self, id: u32) -> String {
        format!("{}:{id}", self.region)
    }

    #[cache_result(skip(self))]
    async fn returns_self_type(&self) -> Option<Vec<Self>> {
        None
    }

    // An associated function: companions are generated (as associated functions).
    #[cache_result]
    async fn lookup(id: u32) -> u32 {
        id
    }
}

impl<'de> serde::Deserialize<'de> for Service {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|region| Service { region })
    }
}

fn main() {
    let s = Service { region: "eu".into() };
    let _ = s.by_value_cache_key(&1);
    let _ = Service::lookup_cache_key(&1);
    drop(Service::lookup_invalidate(&1));
}
