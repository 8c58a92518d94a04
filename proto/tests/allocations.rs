//! Evaluating a flag allocates nothing for boolean, string and number results of static,
//! targeting and fractional flags (issue 20): counted with a counting global allocator, per
//! thread, around `FlagDefinition::resolve` with the request's context prepared.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use grapevine_proto::eval::{EvaluationContext, FlagSet};
use grapevine_proto::flagd::Fractional;
use serde_json::{Value, json};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

fn flag(variants: Value, default: &str, targeting: Value) -> Value {
    json!({"state": "ENABLED", "variants": variants, "defaultVariant": default, "targeting": targeting})
}

#[test]
fn static_targeting_and_fractional_flags_evaluate_without_allocating() {
    let booleans = json!({"on": true, "off": false});
    let tenants: Vec<String> = (0..100).map(|i| format!("tenant-{i}")).collect();
    let file = json!({
        "$evaluators": {"isEmployee": {"ends_with": [{"var": "email"}, "@example.com"]}},
        "flags": {
            "static": {"state": "ENABLED", "variants": booleans, "defaultVariant": "on"},
            "ends-with": flag(booleans.clone(), "off", json!({"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on", "off"]})),
            "string": flag(json!({"red": "#f00", "blue": "#00f"}), "blue", json!({"if": [{"starts_with": [{"var": "email"}, "ada"]}, "red", "blue"]})),
            "number": flag(json!({"low": 1, "high": 1000}), "low", json!({"fractional": [["low", 50], ["high", 50]]})),
            "split": flag(json!({"a": "a", "b": "b", "c": "c", "d": "d"}), "a", json!({"fractional": [["a", 25], ["b", 25], ["c", 25], ["d", 25]]})),
            "by-email": flag(booleans.clone(), "off", json!({"fractional": [{"var": "email"}, ["on", 50], ["off", 50]]})),
            "sem-ver": flag(booleans.clone(), "off", json!({"if": [{"sem_ver": [{"var": "version"}, ">=", "1.2.0"]}, "on", "off"]})),
            "in": flag(booleans.clone(), "off", json!({"if": [{"in": [{"var": "tenant"}, tenants]}, "on", "off"]})),
            "and": flag(booleans.clone(), "off", json!({"if": [{"and": [{"==": [{"var": "user.tier"}, "gold"]}, {">=": [{"var": "user.age"}, 18]}, {"in": [{"var": "user.country"}, ["DE", "NL"]]}, {"!": [{"var": "user.banned"}]}]}, "on", "off"]})),
            "segment": flag(booleans, "off", json!({"if": [{"$ref": "isEmployee"}, "on", "off"]})),
        }
    });
    let set = FlagSet::parse(&file.to_string()).unwrap();
    let context = json!({"targetingKey": "user-42", "email": "ada@example.com", "version": "1.5.3", "tenant": "tenant-77",
        "user": {"tier": "gold", "age": 34, "country": "NL", "banned": false}});
    let values = context.as_object().unwrap();
    let prepared = EvaluationContext::new(values);
    assert!(prepared.check().is_ok());
    for (key, flag) in &set.flags {
        let flag = flag.as_ref().unwrap();
        for scheme in [Fractional::V2, Fractional::Cbor] {
            let mut answer = None;
            let count = allocations(|| {
                let resolution = flag.resolve(key, &prepared, scheme, 1_800_000_000);
                answer = Some((resolution.value.is_some(), resolution.error.is_none()));
            });
            assert_eq!(answer, Some((true, true)), "flag {key} answers a value");
            assert_eq!(count, 0, "flag {key} ({scheme:?}) allocated {count} times");
        }
    }
}
