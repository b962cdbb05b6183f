Status: 404 Not Found
Content-type: text/html; charset=UTF-8

File not found.
