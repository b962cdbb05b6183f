Status: 403 Forbidden
Content-type: text/html; charset=UTF-8

Access denied.
