//! The OpenAPI 3 document of the REST API, built from the route table the router is built
//! from ([`crate::api::routes`]).

use serde_json::{json, Map, Value};

use crate::api::Route;

/// `/api/v1/jobs/:id` → `/api/v1/jobs/{id}`, and the path's parameter names.
pub fn openapi_path(path: &str) -> (String, Vec<&str>) {
    let mut params = vec![];
    let parts: Vec<String> = path
        .split('/')
        .map(|seg| match seg.strip_prefix(':') {
            Some(name) => {
                params.push(name);
                format!("{{{name}}}")
            }
            None => seg.to_owned(),
        })
        .collect();
    (parts.join("/"), params)
}

fn operation(r: &Route) -> Value {
    let (_, params) = openapi_path(r.path);
    let mut op = Map::new();
    op.insert("summary".into(), json!(r.summary));
    let tag = r.path.split('/').nth(3).or_else(|| r.path.split('/').nth(1)).unwrap_or("manager");
    op.insert("tags".into(), json!([tag]));
    if !params.is_empty() {
        let ps: Vec<Value> = params
            .iter()
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "integer"}}))
            .collect();
        op.insert("parameters".into(), json!(ps));
    }
    let mut responses = Map::new();
    responses.insert("200".into(), json!({"description": "OK", "content": {"application/json": {}}}));
    responses.insert("400".into(), json!({"$ref": "#/components/responses/Error"}));
    match &r.scope {
        None => {
            op.insert("security".into(), json!([]));
        }
        Some(scope) => {
            op.insert("security".into(), json!([{"bearer": []}]));
            if let Some(s) = scope {
                op.insert("x-ferry-scope".into(), json!(s.name()));
                responses.insert("403".into(), json!({"$ref": "#/components/responses/Error"}));
            }
            responses.insert("401".into(), json!({"$ref": "#/components/responses/Error"}));
        }
    }
    if !params.is_empty() {
        responses.insert("404".into(), json!({"$ref": "#/components/responses/Error"}));
    }
    if matches!(r.method, axum::http::Method::POST | axum::http::Method::PATCH) {
        let schema = match r.path {
            "/api/v1/jobs" | "/oapi/v1/jobs" => json!({"$ref": "#/components/schemas/NewJob"}),
            _ => json!({"type": "object"}),
        };
        op.insert("requestBody".into(), json!({"required": true, "content": {"application/json": {"schema": schema}}}));
    }
    if r.path.contains("/jobs") {
        let job = json!({"$ref": "#/components/schemas/Job"});
        let schema = if r.method == axum::http::Method::GET && !r.path.ends_with(":id") {
            json!({"type": "array", "items": job})
        } else {
            job
        };
        responses
            .insert("200".into(), json!({"description": "OK", "content": {"application/json": {"schema": schema}}}));
    }
    op.insert("responses".into(), Value::Object(responses));
    Value::Object(op)
}

pub fn document(routes: &[Route]) -> Value {
    let mut paths = Map::new();
    for r in routes {
        let (path, _) = openapi_path(r.path);
        let entry = paths.entry(path).or_insert_with(|| json!({}));
        entry[r.method.as_str().to_ascii_lowercase()] = operation(r);
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Ferry manager", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": {"description": "What was wrong", "content": {"application/json": {"schema": {
                "type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}}}}}},
            "schemas": schemas(),
        }
    })
}

fn schemas() -> Value {
    let task = json!({"type": "object", "required": ["url", "hostname", "ip"], "properties": {
        "url": {"type": "string"}, "hostname": {"type": "string"}, "ip": {"type": "string"},
        "host_id": {"type": "string"}, "description": {"type": "string"}}});
    json!({
        "NewJob": {"type": "object", "required": ["type"], "properties": {
            "type": {"type": "string", "enum": ["preheat", "get_task", "delete_task"]},
            "args": {"type": "object", "properties": {
                "type": {"type": "string", "enum": ["image", "file"]},
                "url": {"type": "string"}, "urls": {"type": "array", "items": {"type": "string"}},
                "tag": {"type": "string"}, "application": {"type": "string"},
                "filtered_query_params": {"type": "string"},
                "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                "username": {"type": "string"}, "password": {"type": "string"},
                "platform": {"type": "string"}, "digest": {"type": "string"}, "task_id": {"type": "string"},
                "scope": {"type": "string", "enum": ["single_seed_peer", "all_seed_peers", "all_peers"]},
                "count": {"type": "integer"}, "ips": {"type": "array", "items": {"type": "string"}},
                "concurrent_count": {"type": "integer"},
                "timeout": {"type": "integer", "description": "nanoseconds"}}},
            "scheduler_cluster_ids": {"type": "array", "items": {"type": "integer"}}}},
        "Job": {"type": "object", "required": ["id", "type", "state", "args", "result", "created_at", "updated_at"], "properties": {
            "id": {"type": "integer"},
            "type": {"type": "string"},
            "state": {"type": "string", "enum": ["PENDING", "RUNNING", "SUCCESS", "FAILURE"]},
            "args": {"type": "object"},
            "scheduler_cluster_ids": {"type": "array", "items": {"type": "integer"}},
            "attempts": {"type": "integer"},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
            "result": {"type": "object", "required": ["job_states"], "properties": {"job_states": {"type": "array", "items": {
                "type": "object", "required": ["state", "error", "results"], "properties": {
                    "state": {"type": "string"}, "error": {"type": "string"},
                    "results": {"type": "array", "items": {"type": "object",
                        "required": ["scheduler_cluster_id", "success_tasks", "failure_tasks"], "properties": {
                        "scheduler_cluster_id": {"type": "integer"},
                        "success_tasks": {"type": "array", "items": task},
                        "failure_tasks": {"type": "array", "items": task},
                        "content_length": {"type": "integer"}}}}}}}}}}},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_convert_to_openapi_templates() {
        assert_eq!(openapi_path("/api/v1/jobs/:id"), ("/api/v1/jobs/{id}".to_owned(), vec!["id"]));
        assert_eq!(openapi_path("/healthy"), ("/healthy".to_owned(), vec![]));
    }

    #[test]
    fn every_route_is_documented_once() {
        let routes = crate::api::routes();
        let doc = document(&routes);
        let mut n = 0;
        for (_, ops) in doc["paths"].as_object().unwrap() {
            n += ops.as_object().unwrap().len();
        }
        assert_eq!(n, routes.len(), "two routes share a method and path");
    }
}
