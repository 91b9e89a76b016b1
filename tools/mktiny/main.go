// Command mktiny writes the deterministic tiny Llama-3-style model (random
// weights, a BPE tokenizer trained on a small embedded corpus) as a Hugging
// Face directory. `make run` serves it until a trained model is bundled.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/kvd-project/kvd/gateway/model/tinymodel"
)

func main() {
	out := flag.String("out", "models/tiny", "directory to write")
	seed := flag.Uint64("seed", 1, "weight seed")
	layers := flag.Int("layers", 0, "decoder layers (0: default)")
	hidden := flag.Int("hidden", 0, "hidden size (0: default)")
	flag.Parse()
	if err := tinymodel.Write(*out, tinymodel.Options{Seed: *seed, Layers: *layers, Hidden: *hidden}); err != nil {
		fmt.Fprintln(os.Stderr, "mktiny:", err)
		os.Exit(1)
	}
	fmt.Println("wrote", *out)
}
