module exchange-stream/bench/loadgen

go 1.22
