package tokenizer

import (
	"strings"
	"testing"
)

// BenchmarkEncode reports tokens/s for each family on corpus text of a few
// sizes; "cold" clears the word cache before every encode.
func BenchmarkEncode(b *testing.B) {
	corpus := readCorpus(b)
	for _, fam := range []string{FamilyLlama3, FamilyLlama2} {
		tok := loadFamily(b, fam)
		for _, size := range []struct {
			name string
			text string
		}{
			{"100B", corpus[:100]},
			{"8KB", corpus},
			{"256KB", strings.Repeat(corpus, 256*1024/len(corpus))},
		} {
			for _, cold := range []bool{false, true} {
				name := fam + "/" + size.name
				if cold {
					name += "/cold"
				}
				b.Run(name, func(b *testing.B) {
					ids, err := tok.Encode(size.text, false)
					if err != nil {
						b.Fatal(err)
					}
					b.SetBytes(int64(len(size.text)))
					b.ResetTimer()
					for b.Loop() {
						if cold {
							tok.model.mappedCache = wordCache{}
							tok.model.textCache = wordCache{}
						}
						if _, err := tok.Encode(size.text, false); err != nil {
							b.Fatal(err)
						}
					}
					b.ReportMetric(float64(len(ids))*float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
				})
			}
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	corpus := readCorpus(b)
	for _, fam := range []string{FamilyLlama3, FamilyLlama2} {
		tok := loadFamily(b, fam)
		ids, err := tok.Encode(corpus, true)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fam+"/whole", func(b *testing.B) {
			for b.Loop() {
				tok.Decode(ids, true)
			}
			b.ReportMetric(float64(len(ids))*float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
		})
		b.Run(fam+"/stream", func(b *testing.B) {
			for b.Loop() {
				d := tok.NewStreamDecoder(true)
				for _, id := range ids {
					d.Add(id)
				}
				d.Flush()
			}
			b.ReportMetric(float64(len(ids))*float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}
