//! Client messages (the JSON inside text frames), through the reactor's simd-json parser,
//! reused across inputs as a reactor reuses it; no input may panic.
#![no_main]

use std::cell::RefCell;

use engine::protocol::inbound::JsonParser;
use libfuzzer_sys::fuzz_target;

thread_local! {
    static PARSER: RefCell<JsonParser> = RefCell::new(JsonParser::default());
}

fuzz_target!(|data: &[u8]| {
    let mut payload = data.to_vec();
    PARSER.with(|parser| {
        let _ = parser.borrow_mut().parse(&mut payload);
    });
});
