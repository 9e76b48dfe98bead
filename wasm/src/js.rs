//! The few JavaScript built-ins the bindings call, declared here instead of taken from
//! `js-sys`: linking `js-sys` at all brings its promise/JSPI task machinery and some forty
//! closure shims into the module (about 0.7 KB gzipped, 1% of the size budget), none of which
//! the bindings use. The tests use `js-sys` freely.

use wasm_bindgen::prelude::*;

#[wasm_bindgen]
extern "C" {
    /// `Error`.
    #[wasm_bindgen(js_name = Error)]
    #[derive(Debug, Clone)]
    pub(crate) type Error;

    /// `new Error(message)`.
    #[wasm_bindgen(constructor, js_class = Error)]
    pub(crate) fn new(message: &str) -> Error;

    /// `Array`.
    #[wasm_bindgen(js_name = Array)]
    #[derive(Debug, Clone)]
    pub(crate) type Array;

    /// `[]`.
    #[wasm_bindgen(constructor, js_class = Array)]
    pub(crate) fn new() -> Array;

    /// `Array.of(a, b)`.
    #[wasm_bindgen(static_method_of = Array, js_class = Array, js_name = of)]
    pub(crate) fn of2(a: &JsValue, b: &JsValue) -> Array;

    /// `Array.of(a, b, c)`.
    #[wasm_bindgen(static_method_of = Array, js_class = Array, js_name = of)]
    pub(crate) fn of3(a: &JsValue, b: &JsValue, c: &JsValue) -> Array;

    /// `array.unshift(value)`.
    #[wasm_bindgen(method, js_class = Array)]
    pub(crate) fn unshift(this: &Array, value: &JsValue) -> u32;

    /// `array.push(value)`.
    #[wasm_bindgen(method, js_class = Array)]
    pub(crate) fn push(this: &Array, value: &JsValue) -> u32;

    /// `Object`.
    #[wasm_bindgen(js_name = Object)]
    #[derive(Debug, Clone)]
    pub(crate) type Object;

    /// `{}`.
    #[wasm_bindgen(constructor, js_class = Object)]
    pub(crate) fn new() -> Object;

    /// `Reflect.set(target, key, value)`, for objects the bindings created (which cannot throw).
    #[wasm_bindgen(js_namespace = Reflect, js_name = set)]
    pub(crate) fn set_property(target: &JsValue, key: &str, value: &JsValue) -> bool;

    /// `JSON.parse(text)` on Rust text.
    #[wasm_bindgen(js_namespace = JSON, js_name = parse, catch)]
    pub(crate) fn parse_str(text: &str) -> Result<JsValue, JsValue>;
}
