Content-Type: application/json
Cache-Control: no-store


Deprecated: something in /srv/prepend.php on line 3
{"probe":"phpfpm-manager-opcache","version":1,"installed":true,"restrict_api":"","status":{"opcache_enabled":true,"cache_full":false,"restart_pending":false,"restart_in_progress":false,"memory_usage":{"used_memory":9174928,"free_memory":125042800,"wasted_memory":0,"current_wasted_percentage":0},"interned_strings_usage":{"buffer_size":8388608,"used_memory":2307840,"free_memory":6080768,"number_of_strings":4565},"opcache_statistics":{"num_cached_scripts":4,"num_cached_keys":4,"max_cached_keys":16229,"hits":5,"start_time":1795690710,"last_restart_time":0,"oom_restarts":0,"hash_restarts":0,"manual_restarts":0,"misses":4,"blacklist_misses":0,"blacklist_miss_ratio":0,"opcache_hit_rate":55.55555555555556},"jit":{"enabled":false,"on":false,"kind":0,"opt_level":0,"opt_flags":0,"buffer_size":0,"buffer_free":0}},"api_allowed":true,"memory_consumption":134217728}
