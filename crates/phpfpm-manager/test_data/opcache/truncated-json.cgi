Content-Type: application/json
Cache-Control: no-store

{"probe":"phpfpm-manager-opcache","version":1,"installed":true,"restrict_api":"","status":{"opcache_enabled":true,"cache_full":false,"restart_pending":false,"restart_in_progress":false,"memory_usage":{"used_memory":9174928,"free_memory":125042800,"wasted_memory":0,"current_wasted_percentage":0},"interned_strings_usage":{"buffer_size":8388608,"used_memory":2307840,"free_memory":6080768,"number_of_strings":4565},"opcache_statistic