"""JSON schemas that structured-output tests and benchmarks/grammar_libraries.py share: nested objects,
arrays, enums, bounded numbers, $ref, anyOf; strings and arrays bounded so outputs end."""

S = {"type": "string", "maxLength": 8}
SCHEMAS = {
    "flat": {"type": "object", "properties": {"name": S, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
             "required": ["name", "age"], "additionalProperties": False},
    "enum": {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"],
             "additionalProperties": False},
    "bool_null": {"type": "object", "properties": {"ok": {"type": "boolean"}, "note": {"type": "null"}},
                  "required": ["ok", "note"], "additionalProperties": False},
    "bounded_number": {"type": "object", "properties": {"x": {"type": "number", "minimum": -1.5, "maximum": 2.5}},
                       "required": ["x"], "additionalProperties": False},
    "array": {"type": "object", "properties": {"tags": {"type": "array", "items": S, "maxItems": 3}},
              "required": ["tags"], "additionalProperties": False},
    "int_array": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 9}, "minItems": 1,
                  "maxItems": 4},
    "nested": {"type": "object", "properties": {
        "user": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 999}, "name": S},
                 "required": ["id", "name"], "additionalProperties": False},
        "roles": {"type": "array", "items": {"enum": ["admin", "dev"]}, "maxItems": 2}},
        "required": ["user", "roles"], "additionalProperties": False},
    "array_of_objects": {"type": "object", "properties": {"points": {"type": "array", "maxItems": 3, "items": {
        "type": "object", "properties": {"x": {"type": "integer", "minimum": -9, "maximum": 9},
                                         "y": {"type": "integer", "minimum": -9, "maximum": 9}},
        "required": ["x", "y"], "additionalProperties": False}}}, "required": ["points"], "additionalProperties": False},
    "const_and_pattern": {"type": "object", "properties": {"v": {"const": 2}, "code": {"type": "string",
                                                                                        "pattern": "^[A-Z]{3}$"}},
                          "required": ["v", "code"], "additionalProperties": False},
    "any_of": {"type": "object", "properties": {"val": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 5},
                                                                  S]}},
               "required": ["val"], "additionalProperties": False},
    "ref": {"$defs": {"p": {"type": "object", "properties": {"n": S}, "required": ["n"], "additionalProperties": False}},
            "type": "object", "properties": {"a": {"$ref": "#/$defs/p"}, "b": {"$ref": "#/$defs/p"}},
            "required": ["a", "b"], "additionalProperties": False},
}
