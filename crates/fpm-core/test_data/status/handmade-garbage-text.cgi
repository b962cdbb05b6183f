Expires: Thu, 01 Jan 1970 00:00:00 GMT
Cache-Control: no-cache, no-store, must-revalidate, max-age=0
Content-Type: application/json

{"pool":"lab","accepted conn":1,"processes":[{"pid":1,"state":"Idle"}]]}}}{{{"x"