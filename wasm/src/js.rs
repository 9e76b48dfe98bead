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

    /// `error.message` (whatever a thrower put there).
    #[wasm_bindgen(method, getter, js_class = Error)]
    pub(crate) fn message(this: &Error) -> JsValue;

    /// `AggregateError` (ES2021; every supported Node and browser has it).
    #[wasm_bindgen(extends = Error)]
    #[derive(Debug, Clone)]
    pub(crate) type AggregateError;

    /// `new AggregateError(errors, message)`.
    #[wasm_bindgen(constructor)]
    pub(crate) fn new(errors: &Array, message: &str) -> AggregateError;

    /// A callable value (`typeof value === "function"`).
    #[wasm_bindgen(is_type_of = JsValue::is_function)]
    #[derive(Debug, Clone)]
    pub(crate) type Function;

    /// `function.call(context, a, b)`; `Err` is what the function threw.
    #[wasm_bindgen(method, catch, js_name = call)]
    pub(crate) fn call2(
        this: &Function,
        context: &JsValue,
        a: &JsValue,
        b: &JsValue,
    ) -> Result<JsValue, JsValue>;

    /// `Array`.
    #[wasm_bindgen(js_name = Array)]
    #[derive(Debug, Clone)]
    pub(crate) type Array;

    /// `[]`.
    #[wasm_bindgen(constructor, js_class = Array)]
    pub(crate) fn new() -> Array;

    /// `Array.of(a, b, c, d, e)`.
    #[wasm_bindgen(static_method_of = Array, js_class = Array, js_name = of)]
    pub(crate) fn of5(a: &JsValue, b: &JsValue, c: &JsValue, d: &JsValue, e: &JsValue) -> Array;

    /// `array.push(value)`.
    #[wasm_bindgen(method, js_class = Array)]
    pub(crate) fn push(this: &Array, value: &JsValue) -> u32;

    /// `array.length`.
    #[wasm_bindgen(method, getter, js_class = Array)]
    pub(crate) fn length(this: &Array) -> u32;

    /// `array.length = length`.
    #[wasm_bindgen(method, setter, js_class = Array, js_name = length)]
    pub(crate) fn set_length(this: &Array, length: u32);

    /// `array[index]`.
    #[wasm_bindgen(method, indexing_getter)]
    pub(crate) fn get(this: &Array, index: u32) -> JsValue;

    /// `array.slice()`: a shallow copy.
    #[wasm_bindgen(method, js_class = Array)]
    pub(crate) fn slice(this: &Array) -> Array;

    /// `Object`.
    #[wasm_bindgen(js_name = Object)]
    #[derive(Debug, Clone)]
    pub(crate) type Object;

    /// `{}`.
    #[wasm_bindgen(constructor, js_class = Object)]
    pub(crate) fn new() -> Object;

    /// `Object.keys(object)`.
    #[wasm_bindgen(static_method_of = Object, js_class = Object)]
    pub(crate) fn keys(object: &JsValue) -> Array;

    /// `Reflect.get(target, key)`; `Err` is what a getter threw.
    #[wasm_bindgen(js_namespace = Reflect, js_name = get, catch)]
    pub(crate) fn get_property(target: &JsValue, key: &str) -> Result<JsValue, JsValue>;

    /// `Reflect.set(target, key, value)`, for objects the bindings created (which cannot throw).
    #[wasm_bindgen(js_namespace = Reflect, js_name = set)]
    pub(crate) fn set_property(target: &JsValue, key: &str, value: &JsValue) -> bool;

    /// `JSON.stringify(value)`: a string, or `undefined` for values JSON has no text for;
    /// `Err` when it throws (a `BigInt`, a cycle, a throwing `toJSON`).
    #[wasm_bindgen(js_namespace = JSON, catch)]
    pub(crate) fn stringify(value: &JsValue) -> Result<JsValue, JsValue>;

    /// `JSON.parse(text)` on a string that stays on the JavaScript side.
    #[wasm_bindgen(js_namespace = JSON, js_name = parse, catch)]
    pub(crate) fn parse(text: &JsValue) -> Result<JsValue, JsValue>;

    /// `JSON.parse(text)` on Rust text.
    #[wasm_bindgen(js_namespace = JSON, js_name = parse, catch)]
    pub(crate) fn parse_str(text: &str) -> Result<JsValue, JsValue>;
}
