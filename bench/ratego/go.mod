module loginaudit.example/bench/ratego

go 1.21
